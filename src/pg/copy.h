/* The statement runner of one shard's PostgreSQL connection, built for
 * COPY: a job is one query string (one or more statements, e.g. "COPY ...
 * FROM STDIN (FORMAT binary); INSERT ...") plus the tuples for each COPY in
 * it, sent with libpq in non-blocking mode. libpq does its own socket
 * syscalls (it cannot hand I/O to io_uring), so the shard's ring only
 * reports when PQsocket is readable or writable and pgc_step() then
 * advances as far as it can without blocking. */
#ifndef SLUICE_PG_COPY_H
#define SLUICE_PG_COPY_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PGC_MAX_COPIES 2

/* Whole binary COPY tuples, without the file header and trailer (the
 * runner adds those). */
struct pgc_rows {
	const uint8_t *data;
	size_t len;
};

struct pgc_job {
	const char *sql;
	struct pgc_rows copy[PGC_MAX_COPIES]; /* for the COPY statements in sql, in order */
	int ncopy;
};

enum pgc_state {
	PGC_IDLE,	 /* no job; one may start */
	PGC_WAIT,	 /* collecting results, or a CopyInResponse */
	PGC_SEND_DATA,	 /* handing one COPY's bytes to libpq in chunks */
	PGC_SEND_END,	 /* its bytes queued; PQputCopyEnd not yet accepted */
	PGC_FLUSH,	 /* CopyDone queued; libpq's output buffer draining */
	PGC_BROKEN,	 /* the connection failed; error says why */
	PGC_NSTATES
};

enum pgc_progress {
	PGC_PENDING, /* wait for the socket events in `want`, then step again */
	PGC_OK,	     /* every statement of the job succeeded */
	PGC_FAILED,  /* a statement failed (or the connection); sqlstate etc. say why */
};

struct pgc {
	PGconn *conn;
	enum pgc_state state;
	struct pgc_job job;
	int copies;	 /* CopyInResponses seen for this job */
	int seg;	 /* of the current COPY's bytes: 0 header, 1 tuples, 2 trailer */
	size_t off;	 /* bytes of that segment handed to libpq */
	bool failed;	 /* an error result arrived for the current job */
	bool aborting;	 /* make the current COPY fail instead of finishing it */
	unsigned want;	 /* POLLIN / POLLOUT that the next step needs */
	/* The first error of the job: */
	char sqlstate[6];
	char error[512];      /* primary message, and its detail in parentheses */
	long line;	      /* COPY's error context "line N": N (1-based tuple), else 0 */
	int failed_in_copy;   /* which COPY (1-based) had started when it came; 0 none */
	uint64_t transitions;
};

void pgc_init(struct pgc *c, PGconn *conn);
/* Send a job (state must be PGC_IDLE); the job's bytes must stay untouched
 * until it ends. */
enum pgc_progress pgc_start(struct pgc *c, const struct pgc_job *job);
/* Advance after socket readiness. */
enum pgc_progress pgc_step(struct pgc *c);
/* Make the COPY in progress fail (PQputCopyEnd with an error message), so
 * that nothing of it commits; without effect once its data is all sent. */
void pgc_abort(struct pgc *c);
const char *pgc_state_name(enum pgc_state s);

#endif
