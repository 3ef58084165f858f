/* The shard's event loop interface, completion-based: submit a receive, a
 * send or a readiness poll tagged with a 64-bit value, then wait for
 * completions. Two backends: io_uring, and epoll where io_uring is blocked
 * (Redis's ae idea: a small vtable, backends apart). */
#ifndef SLUICE_IO_LOOP_H
#define SLUICE_IO_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Tag 0 is the loop's own (a cancel's completion); callers use others. */
struct loop_completion {
	uint64_t tag;
	int res; /* bytes, poll revents, or -errno */
};

struct loop;

struct loop_backend {
	const char *name;
	int (*recv)(struct loop *l, int fd, void *buf, size_t len, uint64_t tag);
	int (*send)(struct loop *l, int fd, const void *buf, size_t len, uint64_t tag);
	/* One-shot readiness poll; completes with the revents mask. */
	int (*poll)(struct loop *l, int fd, unsigned events, uint64_t tag);
	/* Withdraw every operation on fd; call it before closing fd. Their
	 * completions may still arrive (io_uring: -ECANCELED), so owners tell
	 * stale tags apart (shard.c puts a connection generation in them). */
	void (*cancel)(struct loop *l, int fd);
	/* Submit what is queued, then wait up to timeout_ms (-1: forever) for
	 * at least one completion; returns how many were stored, or -errno. */
	int (*wait)(struct loop *l, struct loop_completion *out, int max, int timeout_ms);
	void (*destroy)(struct loop *l);
};

struct loop {
	const struct loop_backend *be;
};

enum loop_choice { LOOP_AUTO, LOOP_URING, LOOP_EPOLL };

/* Create a loop. LOOP_AUTO takes io_uring and falls back to epoll; then
 * `why` says why io_uring could not be used (empty when it was). On failure
 * returns NULL and says why. */
struct loop *loop_open(enum loop_choice choice, char *why, size_t whylen);
struct loop *loop_uring_new(unsigned entries, char *why, size_t whylen);
struct loop *loop_epoll_new(char *why, size_t whylen);

static inline int loop_recv(struct loop *l, int fd, void *buf, size_t len, uint64_t tag)
{
	return l->be->recv(l, fd, buf, len, tag);
}

static inline int loop_send(struct loop *l, int fd, const void *buf, size_t len, uint64_t tag)
{
	return l->be->send(l, fd, buf, len, tag);
}

static inline int loop_poll(struct loop *l, int fd, unsigned events, uint64_t tag)
{
	return l->be->poll(l, fd, events, tag);
}

static inline void loop_cancel(struct loop *l, int fd) { l->be->cancel(l, fd); }

static inline int loop_wait(struct loop *l, struct loop_completion *out, int max,
			    int timeout_ms)
{
	return l->be->wait(l, out, max, timeout_ms);
}

static inline void loop_destroy(struct loop *l)
{
	if (l)
		l->be->destroy(l);
}

#endif
