/* COPY state machine; see copy.h. Follows the non-blocking protocol of
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
	"idle", "wait-copy-in", "send-data", "send-end", "flush", "wait-result", "broken",
};

/* Allowed transitions, as a bit set of target states per source state. */
#define B(s) (1u << (s))
static const unsigned pgc_next[PGC_NSTATES] = {
	[PGC_IDLE] = B(PGC_WAIT_COPY_IN) | B(PGC_BROKEN),
	[PGC_WAIT_COPY_IN] = B(PGC_SEND_DATA) | B(PGC_IDLE) | B(PGC_BROKEN),
	[PGC_SEND_DATA] = B(PGC_SEND_END) | B(PGC_BROKEN),
	[PGC_SEND_END] = B(PGC_FLUSH) | B(PGC_BROKEN),
	[PGC_FLUSH] = B(PGC_WAIT_RESULT) | B(PGC_BROKEN),
	[PGC_WAIT_RESULT] = B(PGC_IDLE) | B(PGC_BROKEN),
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

void pgc_init(struct pgc *c, PGconn *conn, const char *copy_sql)
{
	*c = (struct pgc){.conn = conn, .copy_sql = copy_sql, .state = PGC_IDLE};
}

static void pgc_note_error(struct pgc *c, const PGresult *res)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(c->conn);
	snprintf(c->sqlstate, sizeof(c->sqlstate), "%s", state ? state : "08006");
	snprintf(c->error, sizeof(c->error), "%s", msg && msg[0] ? msg : "unknown error");
	size_t n = strlen(c->error);
	while (n && c->error[n - 1] == '\n')
		c->error[--n] = '\0';
}

static enum pgc_progress pgc_broken(struct pgc *c)
{
	pgc_note_error(c, NULL);
	pgc_set_state(c, PGC_BROKEN);
	return PGC_FAILED;
}

enum pgc_progress pgc_start(struct pgc *c, struct batch *b)
{
	cbin_trailer(&b->data);
	c->batch = b;
	c->sent = 0;
	c->failed = false;
	c->sqlstate[0] = c->error[0] = '\0';
	if (!PQsendQuery(c->conn, c->copy_sql))
		return pgc_broken(c);
	pgc_set_state(c, PGC_WAIT_COPY_IN);
	return pgc_step(c);
}

/* Read what the server sent and collect results until libpq would block;
 * returns false when the connection failed. */
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
			pgc_set_state(c, PGC_SEND_DATA);
			return true;
		}
		if (st != PGRES_COMMAND_OK && !c->failed) {
			c->failed = true;
			pgc_note_error(c, res);
		}
		PQclear(res);
	}
	return true;
}

enum pgc_progress pgc_step(struct pgc *c)
{
	bool done;
	int rc;

	c->want = 0;
	switch (c->state) {
	case PGC_IDLE:
		return PGC_PENDING;
	case PGC_BROKEN:
		return PGC_FAILED;
	case PGC_WAIT_COPY_IN:
		if (!pgc_collect(c, &done))
			return pgc_broken(c);
		if (done) { /* no CopyInResponse: the COPY itself failed */
			pgc_set_state(c, PGC_IDLE);
			return PGC_FAILED;
		}
		if (c->state == PGC_WAIT_COPY_IN) {
			c->want = POLLIN;
			return PGC_PENDING;
		}
		/* fall through - CopyInResponse arrived */
	case PGC_SEND_DATA:
		while (c->sent < c->batch->data.len) {
			rc = PQflush(c->conn);
			if (rc < 0)
				return pgc_broken(c);
			if (rc > 0) {
				c->want = POLLOUT | POLLIN;
				return PGC_PENDING;
			}
			size_t n = c->batch->data.len - c->sent;
			if (n > PGC_CHUNK)
				n = PGC_CHUNK;
			rc = PQputCopyData(c->conn, (const char *)c->batch->data.data + c->sent,
					   (int)n);
			if (rc < 0)
				return pgc_broken(c);
			if (rc == 0) {
				c->want = POLLOUT;
				return PGC_PENDING;
			}
			c->sent += n;
		}
		pgc_set_state(c, PGC_SEND_END);
		/* fall through */
	case PGC_SEND_END:
		rc = PQputCopyEnd(c->conn, NULL);
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
		pgc_set_state(c, PGC_WAIT_RESULT);
		/* fall through */
	case PGC_WAIT_RESULT:
		if (!pgc_collect(c, &done))
			return pgc_broken(c);
		if (!done) {
			c->want = POLLIN;
			return PGC_PENDING;
		}
		/* ReadyForQuery: with no transaction block open, the COPY's
		 * implicit transaction has committed (protocol-flow.html). */
		pgc_set_state(c, PGC_IDLE);
		return c->failed ? PGC_FAILED : PGC_COMMITTED;
	case PGC_NSTATES:
		break;
	}
	log_error("internal error: COPY state %d", (int)c->state);
	abort();
}
