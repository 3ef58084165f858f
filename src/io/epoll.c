/* epoll backend of the loop, for hosts where io_uring is blocked (container
 * seccomp profiles, kernel.io_uring_disabled). It keeps the completion
 * interface: an operation waits for its fd's readiness (level-triggered),
 * then runs the non-blocking syscall and completes with its result. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "io/loop.h"

/* A shard has at most five operations outstanding (recv, send, two polls
 * and the wake poll); room for a few more keeps the check simple. */
#define EP_MAX_OPS 16

enum ep_kind { EP_RECV, EP_SEND, EP_POLL };

struct ep_op {
	enum ep_kind kind;
	int fd;
	void *buf;
	size_t len;
	unsigned events; /* EP_POLL: what was asked for */
	uint64_t tag;
};

struct epoll_loop {
	struct loop base;
	int epfd;
	int nops;
	struct ep_op ops[EP_MAX_OPS];
};

static unsigned ep_wants(const struct ep_op *op)
{
	switch (op->kind) {
	case EP_RECV: return POLLIN;
	case EP_SEND: return POLLOUT;
	case EP_POLL: return op->events;
	}
	return 0;
}

/* Re-register fd with the union of what its pending operations wait for. */
static int ep_sync_fd(struct epoll_loop *e, int fd, bool was_registered)
{
	unsigned mask = 0;
	for (int i = 0; i < e->nops; i++)
		if (e->ops[i].fd == fd)
			mask |= ep_wants(&e->ops[i]);
	struct epoll_event ev = {.events = mask, .data.fd = fd};
	int op = mask == 0 ? EPOLL_CTL_DEL : was_registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
	if (epoll_ctl(e->epfd, op, fd, &ev) < 0) {
		if (op == EPOLL_CTL_ADD && errno == EEXIST)
			return epoll_ctl(e->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 ? -errno : 0;
		if (op == EPOLL_CTL_DEL && (errno == ENOENT || errno == EBADF))
			return 0;
		return -errno;
	}
	return 0;
}

static bool ep_fd_registered(const struct epoll_loop *e, int fd)
{
	for (int i = 0; i < e->nops; i++)
		if (e->ops[i].fd == fd)
			return true;
	return false;
}

static int ep_add(struct loop *l, struct ep_op op)
{
	struct epoll_loop *e = (struct epoll_loop *)l;
	if (e->nops == EP_MAX_OPS)
		return -EBUSY;
	bool registered = ep_fd_registered(e, op.fd);
	e->ops[e->nops++] = op;
	int rc = ep_sync_fd(e, op.fd, registered);
	if (rc < 0)
		e->nops--;
	return rc;
}

static int ep_recv(struct loop *l, int fd, void *buf, size_t len, uint64_t tag)
{
	return ep_add(l, (struct ep_op){.kind = EP_RECV, .fd = fd, .buf = buf, .len = len, .tag = tag});
}

static int ep_send(struct loop *l, int fd, const void *buf, size_t len, uint64_t tag)
{
	return ep_add(l, (struct ep_op){.kind = EP_SEND, .fd = fd, .buf = (void *)buf, .len = len,
					.tag = tag});
}

static int ep_poll(struct loop *l, int fd, unsigned events, uint64_t tag)
{
	return ep_add(l, (struct ep_op){.kind = EP_POLL, .fd = fd, .events = events, .tag = tag});
}

static void ep_cancel(struct loop *l, int fd)
{
	struct epoll_loop *e = (struct epoll_loop *)l;
	bool had = false;
	for (int i = 0; i < e->nops;) {
		if (e->ops[i].fd == fd) {
			e->ops[i] = e->ops[--e->nops];
			had = true;
		} else {
			i++;
		}
	}
	if (had)
		ep_sync_fd(e, fd, true); /* no operations left: EPOLL_CTL_DEL */
}

/* Run op now that its fd reported `revents`; returns false if it would
 * still block (it stays pending). */
static bool ep_run(const struct ep_op *op, unsigned revents, int *res)
{
	ssize_t n;
	switch (op->kind) {
	case EP_POLL:
		*res = (int)(revents & (op->events | POLLERR | POLLHUP));
		return *res != 0;
	case EP_RECV:
		n = recv(op->fd, op->buf, op->len, MSG_DONTWAIT);
		break;
	case EP_SEND:
		n = send(op->fd, op->buf, op->len, MSG_DONTWAIT | MSG_NOSIGNAL);
		break;
	default:
		return false;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return false;
	*res = n < 0 ? -errno : (int)n;
	return true;
}

static int ep_wait(struct loop *l, struct loop_completion *out, int max, int timeout_ms)
{
	struct epoll_loop *e = (struct epoll_loop *)l;
	struct epoll_event evs[EP_MAX_OPS];
	int n = epoll_wait(e->epfd, evs, EP_MAX_OPS, timeout_ms);
	if (n < 0)
		return errno == EINTR ? 0 : -errno;

	int done = 0;
	for (int k = 0; k < n; k++) {
		int fd = evs[k].data.fd;
		unsigned revents = evs[k].events;
		bool changed = false;
		for (int i = 0; i < e->nops && done < max;) {
			int res;
			if (e->ops[i].fd != fd || !ep_run(&e->ops[i], revents, &res)) {
				i++;
				continue;
			}
			out[done++] = (struct loop_completion){.tag = e->ops[i].tag, .res = res};
			e->ops[i] = e->ops[--e->nops];
			changed = true;
		}
		if (changed) {
			int rc = ep_sync_fd(e, fd, true);
			if (rc < 0)
				return rc;
		}
	}
	return done;
}

static void ep_destroy(struct loop *l)
{
	struct epoll_loop *e = (struct epoll_loop *)l;
	close(e->epfd);
	free(e);
}

static const struct loop_backend epoll_backend = {
	.name = "epoll",
	.recv = ep_recv,
	.send = ep_send,
	.poll = ep_poll,
	.cancel = ep_cancel,
	.wait = ep_wait,
	.destroy = ep_destroy,
};

struct loop *loop_epoll_new(char *why, size_t whylen)
{
	struct epoll_loop *e = calloc(1, sizeof(*e));
	if (!e) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	e->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (e->epfd < 0) {
		snprintf(why, whylen, "epoll_create1: %s", strerror(errno));
		free(e);
		return NULL;
	}
	e->base.be = &epoll_backend;
	return &e->base;
}
