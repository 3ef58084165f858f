/* io_uring backend of the loop: one ring per shard, owned by the shard's
 * thread. Submissions are batched and go to the kernel in one
 * io_uring_submit_and_wait_timeout per loop turn; no syscall per message. */
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "io/loop.h"

struct uring_loop {
	struct loop base;
	struct io_uring ring;
};

static struct io_uring_sqe *uring_sqe(struct uring_loop *u)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	if (!sqe) {
		/* SQ full: hand what we have to the kernel and try again. */
		io_uring_submit(&u->ring);
		sqe = io_uring_get_sqe(&u->ring);
	}
	return sqe;
}

static int uring_recv(struct loop *l, int fd, void *buf, size_t len, uint64_t tag)
{
	struct io_uring_sqe *sqe = uring_sqe((struct uring_loop *)l);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_recv(sqe, fd, buf, len, 0);
	io_uring_sqe_set_data64(sqe, tag);
	return 0;
}

static int uring_send(struct loop *l, int fd, const void *buf, size_t len, uint64_t tag)
{
	struct io_uring_sqe *sqe = uring_sqe((struct uring_loop *)l);
	if (!sqe)
		return -EBUSY;
	/* MSG_NOSIGNAL: a peer reset must be an error code, not SIGPIPE. */
	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, tag);
	return 0;
}

static int uring_poll(struct loop *l, int fd, unsigned events, uint64_t tag)
{
	struct io_uring_sqe *sqe = uring_sqe((struct uring_loop *)l);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_poll_add(sqe, fd, events);
	io_uring_sqe_set_data64(sqe, tag);
	return 0;
}

static void uring_cancel(struct loop *l, int fd)
{
	struct uring_loop *u = (struct uring_loop *)l;
	struct io_uring_sqe *sqe = uring_sqe(u);
	if (!sqe)
		return;
	io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
	io_uring_sqe_set_data64(sqe, 0);
	/* Submit now, while fd still names the file: once the caller closes
	 * it, the kernel could not find the operations by fd, and a pending
	 * poll or recv would keep the socket open. */
	io_uring_submit(&u->ring);
}

static int uring_wait(struct loop *l, struct loop_completion *out, int max, int timeout_ms)
{
	struct uring_loop *u = (struct uring_loop *)l;
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts = {
		.tv_sec = timeout_ms / 1000,
		.tv_nsec = (long long)(timeout_ms % 1000) * 1000000,
	};
	int rc = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1,
						  timeout_ms < 0 ? NULL : &ts, NULL);
	if (rc < 0 && rc != -ETIME && rc != -EINTR)
		return rc;

	unsigned head, n = 0, seen = 0;
	io_uring_for_each_cqe(&u->ring, head, cqe)
	{
		if ((int)n == max)
			break;
		seen++;
		if (io_uring_cqe_get_data64(cqe) == 0)
			continue; /* a cancel's own completion */
		out[n].tag = io_uring_cqe_get_data64(cqe);
		out[n].res = cqe->res;
		n++;
	}
	io_uring_cq_advance(&u->ring, seen);
	return (int)n;
}

static void uring_destroy(struct loop *l)
{
	struct uring_loop *u = (struct uring_loop *)l;
	io_uring_queue_exit(&u->ring);
	free(u);
}

static const struct loop_backend uring_backend = {
	.name = "io_uring",
	.recv = uring_recv,
	.send = uring_send,
	.poll = uring_poll,
	.cancel = uring_cancel,
	.wait = uring_wait,
	.destroy = uring_destroy,
};

struct loop *loop_uring_new(unsigned entries, char *why, size_t whylen)
{
	struct uring_loop *u = calloc(1, sizeof(*u));
	if (!u) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	struct io_uring_params p = {
		/* One thread submits and reaps: lets the kernel skip locking. */
		.flags = IORING_SETUP_SINGLE_ISSUER
			 /* Run completion work when we wait, not by IPI mid-turn. */
			 | IORING_SETUP_DEFER_TASKRUN
			 /* A full CQ with many polls and a large recv batch
			  * must not overflow: twice the SQ is plenty here. */
			 | IORING_SETUP_CQSIZE,
		.cq_entries = entries * 2,
	};
	int rc = io_uring_queue_init_params(entries, &u->ring, &p);
	if (rc == -EINVAL) {
		/* Kernels before 6.1 lack DEFER_TASKRUN / SINGLE_ISSUER. */
		p = (struct io_uring_params){.flags = IORING_SETUP_CQSIZE,
					     .cq_entries = entries * 2};
		rc = io_uring_queue_init_params(entries, &u->ring, &p);
	}
	if (rc < 0) {
		snprintf(why, whylen, "io_uring_queue_init: %s", strerror(-rc));
		free(u);
		return NULL;
	}
	if (!(p.features & IORING_FEAT_EXT_ARG)) {
		/* submit_and_wait_timeout needs EXT_ARG (5.11) to avoid a
		 * timeout SQE per turn. */
		snprintf(why, whylen, "kernel lacks IORING_FEAT_EXT_ARG (needs Linux 5.11)");
		io_uring_queue_exit(&u->ring);
		free(u);
		return NULL;
	}
	u->base.be = &uring_backend;
	return &u->base;
}
