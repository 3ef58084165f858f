/* The COPY state machine of one shard's PostgreSQL connection: sends one
 * batch as "COPY ... FROM STDIN (FORMAT binary)" with libpq in non-blocking
 * mode. libpq does its own socket syscalls (it cannot hand I/O to io_uring),
 * so the shard's ring only reports when PQsocket is readable or writable and
 * pgc_step() then advances as far as it can without blocking. */
#ifndef SLUICE_PG_COPY_H
#define SLUICE_PG_COPY_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"

/* Rows waiting for, or in, one COPY. */
struct batch {
	struct buf data;   /* binary COPY stream: header then whole tuples */
	uint32_t rows;
	uint64_t last_tag; /* delivery tag of the last row, acked with multiple */
	int64_t first_ms;  /* monotonic ms when the first row arrived */
};

enum pgc_state {
	PGC_IDLE,	  /* connection idle; a batch may start */
	PGC_WAIT_COPY_IN, /* COPY sent; waiting for CopyInResponse */
	PGC_SEND_DATA,	  /* handing the batch to libpq in chunks */
	PGC_SEND_END,	  /* all data queued; PQputCopyEnd not yet accepted */
	PGC_FLUSH,	  /* CopyDone queued; libpq's output buffer draining */
	PGC_WAIT_RESULT,  /* waiting for CommandComplete, then ReadyForQuery */
	PGC_BROKEN,	  /* the connection failed; error says why */
	PGC_NSTATES
};

enum pgc_progress {
	PGC_PENDING,   /* wait for the socket events in `want`, then step again */
	PGC_COMMITTED, /* the batch's transaction committed */
	PGC_FAILED,    /* the batch was rolled back; sqlstate and error say why */
};

struct pgc {
	PGconn *conn;
	const char *copy_sql;
	enum pgc_state state;
	const struct batch *batch;
	size_t sent;	 /* bytes of batch->data handed to libpq */
	bool failed;	 /* an error result arrived for the current batch */
	unsigned want;	 /* POLLIN / POLLOUT that the next step needs */
	char sqlstate[6];
	char error[512];
	uint64_t transitions;
};

void pgc_init(struct pgc *c, PGconn *conn, const char *copy_sql);
/* Start sending a batch (state must be PGC_IDLE); the batch must stay
 * untouched until the COPY ends. The trailer is appended here. */
enum pgc_progress pgc_start(struct pgc *c, struct batch *b);
/* Advance after socket readiness. */
enum pgc_progress pgc_step(struct pgc *c);
const char *pgc_state_name(enum pgc_state s);

#endif
