/* Statement runner; see copy.h. Follows the non-blocking protocol of
 * libpq's docs (libpq-async.html): after PQflush returns 1, wait for read
 * or write readiness, consume input when readable, flush again. Data is
 * handed over in chunks and only while libpq's buffer is empty, so libpq
 * never holds more than one chunk beyond what the socket took. */
#include "pg/copy.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "row/copybin.h"

#define PGC_CHUNK (256 * 1024)

static const char *const pgc_names[PGC_NSTATES] = {
	"idle", "wait", "send-data", "send-end", "flush", "broken",
};

/* Allowed transitions, as a bit set of target states per source state. */
#define B(s) (1u << (s))
static const unsigned pgc_next[PGC_NSTATES] = {
	[PGC_IDLE] = B(PGC_WAIT) | B(PGC_BROKEN),
	[PGC_WAIT] = B(PGC_SEND_DATA) | B(PGC_SEND_END) | B(PGC_IDLE) | B(PGC_BROKEN),
	[PGC_SEND_DATA] = B(PGC_SEND_END) | B(PGC_BROKEN),
	[PGC_SEND_END] = B(PGC_FLUSH) | B(PGC_BROKEN),
	[PGC_FLUSH] = B(PGC_WAIT) | B(PGC_BROKEN),
	[PGC_BROKEN] = 0,
};
#undef B

const char *pgc_state_name(enum pgc_state s) { return pgc_names[s]; }

static void pgc_set_state(struct pgc *c, enum pgc_state to)
{
	if (!(pgc_next[c->state] & (1u << to))) {
		log_error("internal error: COPY state %s -> %s is not a transition",
			  pgc_names[c->state], pgc_names[to]);
		abort();
	}
	log_debug("COPY state %s -> %s", pgc_names[c->state], pgc_names[to]);
	c->state = to;
	c->transitions++;
}

void pgc_init(struct pgc *c, PGconn *conn)
{
	*c = (struct pgc){.conn = conn, .state = PGC_IDLE};
}

/* "COPY t, line 3, column body": the tuple's number within that COPY. */
static long pgc_context_line(const char *context)
{
	const char *at = context ? strstr(context, "COPY ") : NULL;
	at = at ? strstr(at, ", line ") : NULL;
	return at ? strtol(at + 7, NULL, 10) : 0;
}

static void pgc_note_error(struct pgc *c, const PGresult *res)
{
	if (c->failed)
		return; /* the first error is the cause; later ones follow from it */
	c->failed = true;
	c->failed_in_copy = c->copies;
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
	if (!msg) /* no result: the connection's own error */
		msg = PQerrorMessage(c->conn);
	snprintf(c->sqlstate, sizeof(c->sqlstate), "%s", state ? state : "08006");
	snprintf(c->error, sizeof(c->error), detail ? "%s (%s)" : "%s",
		 msg && msg[0] ? msg : "unknown error", detail);
	for (char *p = c->error; *p; p++) /* one log line, one dead-letter field */
		if (*p == '\n' || *p == '\t')
			*p = ' ';
	size_t n = strlen(c->error);
	while (n && c->error[n - 1] == ' ')
		c->error[--n] = '\0';
	c->line = res ? pgc_context_line(PQresultErrorField(res, PG_DIAG_CONTEXT)) : 0;
}

static enum pgc_progress pgc_broken(struct pgc *c)
{
	c->failed = false; /* the connection's error is the one that counts */
	pgc_note_error(c, NULL);
	pgc_set_state(c, PGC_BROKEN);
	return PGC_FAILED;
}

enum pgc_progress pgc_start(struct pgc *c, const struct pgc_job *job)
{
	c->job = *job;
	c->copies = 0;
	c->failed = c->aborting = false;
	c->sqlstate[0] = c->error[0] = '\0';
	c->line = 0;
	c->failed_in_copy = 0;
	if (!PQsendQuery(c->conn, job->sql))
		return pgc_broken(c);
	pgc_set_state(c, PGC_WAIT);
	return pgc_step(c);
}

void pgc_abort(struct pgc *c) { c->aborting = true; }

/* Read what the server sent and collect results until libpq would block
 * (*done false), the job's results are all in (*done true), or a COPY
 * starts (state SEND_DATA or, aborting, SEND_END). False when the
 * connection failed. */
static bool pgc_collect(struct pgc *c, bool *done)
{
	*done = false;
	if (!PQconsumeInput(c->conn))
		return false;
	while (!PQisBusy(c->conn)) {
		PGresult *res = PQgetResult(c->conn);
		if (!res) {
			*done = true;
			return true;
		}
		ExecStatusType st = PQresultStatus(res);
		if (st == PGRES_COPY_IN) {
			PQclear(res);
			c->copies++;
			c->seg = 0;
			c->off = 0;
			/* A COPY the job has no rows for is a bug in the caller:
			 * fail it rather than load nothing. */
			if (c->copies > c->job.ncopy)
				c->aborting = true;
			pgc_set_state(c, c->aborting ? PGC_SEND_END : PGC_SEND_DATA);
			return true;
		}
		if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
			pgc_note_error(c, res);
		PQclear(res);
	}
	return true;
}

/* The next bytes of the current COPY: header, tuples, trailer. */
static bool pgc_segment(const struct pgc *c, const uint8_t **p, size_t *n)
{
	const struct pgc_rows *rows = &c->job.copy[c->copies - 1];
	switch (c->seg) {
	case 0: *p = cbin_head, *n = CBIN_HEAD_LEN; return true;
	case 1: *p = rows->data, *n = rows->len; return true;
	case 2: *p = cbin_tail, *n = CBIN_TAIL_LEN; return true;
	default: return false;
	}
}

enum pgc_progress pgc_step(struct pgc *c)
{
	bool done;
	int rc;
	const uint8_t *p;
	size_t n;

	c->want = 0;
	switch (c->state) {
	case PGC_IDLE:
		return PGC_PENDING;
	case PGC_BROKEN:
		return PGC_FAILED;
	case PGC_WAIT:
		if (!pgc_collect(c, &done))
			return pgc_broken(c);
		if (done) {
			pgc_set_state(c, PGC_IDLE);
			return c->failed ? PGC_FAILED : PGC_OK;
		}
		if (c->state == PGC_WAIT) {
			c->want = POLLIN;
			return PGC_PENDING;
		}
		return pgc_step(c); /* a COPY started */
	case PGC_SEND_DATA:
		while (!c->aborting && pgc_segment(c, &p, &n)) {
			if (c->off == n) {
				c->seg++;
				c->off = 0;
				continue;
			}
			rc = PQflush(c->conn);
			if (rc < 0)
				return pgc_broken(c);
			if (rc > 0) {
				c->want = POLLOUT | POLLIN;
				return PGC_PENDING;
			}
			size_t chunk = n - c->off < PGC_CHUNK ? n - c->off : PGC_CHUNK;
			rc = PQputCopyData(c->conn, (const char *)p + c->off, (int)chunk);
			if (rc < 0)
				return pgc_broken(c);
			if (rc == 0) {
				c->want = POLLOUT;
				return PGC_PENDING;
			}
			c->off += chunk;
		}
		pgc_set_state(c, PGC_SEND_END);
		/* fall through */
	case PGC_SEND_END:
		rc = PQputCopyEnd(c->conn, c->aborting ? "sluice abandoned this COPY" : NULL);
		if (rc < 0)
			return pgc_broken(c);
		if (rc == 0) {
			c->want = POLLOUT;
			return PGC_PENDING;
		}
		pgc_set_state(c, PGC_FLUSH);
		/* fall through */
	case PGC_FLUSH:
		rc = PQflush(c->conn);
		if (rc < 0)
			return pgc_broken(c);
		if (rc > 0) {
			/* Read too: the server may be telling us why it stopped. */
			if (!PQconsumeInput(c->conn))
				return pgc_broken(c);
			c->want = POLLOUT | POLLIN;
			return PGC_PENDING;
		}
		/* ReadyForQuery after the last result: with no transaction block
		 * open, the job's implicit transaction has committed
		 * (protocol-flow.html, "Multiple Statements in a Simple Query"). */
		pgc_set_state(c, PGC_WAIT);
		return pgc_step(c);
	case PGC_NSTATES:
		break;
	}
	log_error("internal error: COPY state %d", (int)c->state);
	abort();
}
