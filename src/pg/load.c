/* Batch loading and row isolation; see load.h. */
#include "pg/load.h"

#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "pg/connect.h"

#define SAVEPOINT "SAVEPOINT sluice_piece"

void load_init(struct loader *l, const struct config *cfg, const struct sql_plan *plan)
{
	*l = (struct loader){.cfg = cfg, .plan = plan};
	pgc_init(&l->pgc, NULL);
}

void load_free(struct loader *l)
{
	buf_free(&l->sql);
	iso_free(&l->iso);
}

/* Isolation abandoned (its transaction is gone): drop what it found. */
static void load_forget_isolation(struct loader *l)
{
	if (l->isolating && l->batch) {
		l->batch->dead.len = l->dead_len0;
		l->batch->ndead = l->ndead0;
	}
	l->isolating = false;
}

void load_attach(struct loader *l, PGconn *conn)
{
	load_forget_isolation(l);
	pgc_init(&l->pgc, conn);
	l->job = LOAD_IDLE;
	l->batch = NULL;
}

const char *load_error(const struct loader *l, char *buf, size_t len)
{
	snprintf(buf, len, "%s (SQLSTATE %s)", l->pgc.error, l->pgc.sqlstate);
	return buf;
}

static enum load_result load_step_result(struct loader *l, enum pgc_progress r);

static enum load_result load_run(struct loader *l, enum load_job kind, const struct pgc_job *job)
{
	l->job = kind;
	return load_step_result(l, pgc_start(&l->pgc, job));
}

static const char *load_sql_done(struct loader *l)
{
	buf_put_u8(&l->sql, 0);
	return (const char *)l->sql.data;
}

static bool load_writes_dead(const struct loader *l)
{
	return l->cfg->dead_letter == DEAD_LETTER_TABLE && l->batch->ndead > 0;
}

static struct pgc_rows load_dead_rows(const struct loader *l)
{
	return (struct pgc_rows){l->batch->dead.data, l->batch->dead.len};
}

enum load_result load_setup(struct loader *l)
{
	if (!l->plan->setup)
		return LOAD_DONE;
	return load_run(l, LOAD_SETUP, &(struct pgc_job){.sql = l->plan->setup});
}

enum load_result load_start(struct loader *l, struct batch *b)
{
	struct pgc_job job = {0};
	l->batch = b;
	l->isolating = false;
	l->found = 0;
	buf_reset(&l->sql);
	if (b->nrows) {
		buf_put_str(&l->sql, l->plan->load);
		job.copy[job.ncopy++] = batch_rows(b, 0, b->nrows);
	}
	if (load_writes_dead(l)) {
		buf_put_str(&l->sql, l->sql.len ? "; " : "");
		buf_put_str(&l->sql, l->plan->dead);
		job.copy[job.ncopy++] = load_dead_rows(l);
	}
	if (job.ncopy == 0)
		return LOAD_DONE; /* only rejects to send */
	job.sql = load_sql_done(l);
	return load_run(l, LOAD_PLAIN, &job);
}

/* The next piece, or the closing statement when none is left. */
static enum load_result load_next(struct loader *l)
{
	struct pgc_job job = {0};
	buf_reset(&l->sql);
	if (iso_next(&l->iso, &l->piece)) {
		if (!l->begun)
			buf_put_str(&l->sql, "BEGIN; " SAVEPOINT "; ");
		else if (l->last_failed)
			buf_put_str(&l->sql, "ROLLBACK TO " SAVEPOINT "; ");
		else
			buf_put_str(&l->sql, "RELEASE " SAVEPOINT "; " SAVEPOINT "; ");
		l->begun = true;
		buf_put_str(&l->sql, l->plan->load);
		if (l->plan->piece_end) {
			buf_put_str(&l->sql, "; ");
			buf_put_str(&l->sql, l->plan->piece_end);
		}
		job.copy[job.ncopy++] = batch_rows(l->batch, l->piece.lo, l->piece.hi);
		job.sql = load_sql_done(l);
		return load_run(l, LOAD_PIECE, &job);
	}
	/* Without a piece run (a batch of one row) there is no transaction
	 * block: the dead letters go in an implicit one. */
	if (l->last_failed)
		buf_put_str(&l->sql, "ROLLBACK TO " SAVEPOINT "; ");
	if (load_writes_dead(l)) {
		buf_put_str(&l->sql, l->plan->dead);
		job.copy[job.ncopy++] = load_dead_rows(l);
	}
	if (l->begun)
		buf_put_str(&l->sql, job.ncopy ? "; COMMIT" : "COMMIT");
	if (l->sql.len == 0)
		return LOAD_DONE; /* rejects only: nothing to write */
	job.sql = load_sql_done(l);
	return load_run(l, LOAD_FINAL, &job);
}

/* Range r failed for its data: a single row is a culprit, else split it. */
static enum load_result load_isolate(struct loader *l, struct iso_range r, long line)
{
	struct batch *b = l->batch;
	if (iso_split(&l->iso, r, line)) {
		struct pgc_rows row = batch_row(b, r.lo);
		batch_add_dead(b, l->cfg, b->rows[r.lo].tag, row.data, row.len, l->pgc.sqlstate,
			       l->pgc.error);
		l->found++;
	}
	return load_next(l);
}

static enum load_result load_begin_isolation(struct loader *l)
{
	struct batch *b = l->batch;
	l->isolating = true;
	l->begun = l->last_failed = false;
	l->dead_len0 = b->dead.len;
	l->ndead0 = b->ndead;
	l->found = 0;
	iso_reset(&l->iso);
	log_warn("PostgreSQL rejected a batch of %u rows: %s (SQLSTATE %s); isolating the "
		 "rows at fault", b->nrows, l->pgc.error, l->pgc.sqlstate);
	/* The error's line is a row number only when the first COPY (the
	 * rows) was the one running. */
	long line = l->pgc.failed_in_copy == 1 ? l->pgc.line : 0;
	return load_isolate(l, (struct iso_range){0, b->nrows}, line);
}

static enum load_result load_failed(struct loader *l, enum load_job kind)
{
	struct pgc *c = &l->pgc;
	enum pg_class cls = c->state == PGC_BROKEN ? PG_TRANSIENT : pg_classify(c->sqlstate);
	char why[600];
	if (cls == PG_TRANSIENT)
		return LOAD_RETRY;
	/* Per-row errors in the dead letters, or at COMMIT (a deferred
	 * constraint), cannot be isolated: stop rather than loop. */
	bool dead_failed = kind == LOAD_FINAL ||
			   (kind == LOAD_PLAIN && (c->failed_in_copy == 2 || l->batch->nrows == 0));
	if (cls == PG_ROW && kind == LOAD_PLAIN && !dead_failed)
		return load_begin_isolation(l);
	if (cls == PG_ROW && kind == LOAD_PIECE) {
		l->last_failed = true;
		return load_isolate(l, l->piece, c->line);
	}
	load_error(l, why, sizeof(why));
	if (dead_failed)
		log_error("PostgreSQL: cannot write dead letters to %s: %s "
			  "(SLUICE_DEAD_LETTER_TABLE); stopping, nothing of the batch is acked",
			  l->cfg->dead_letter_table, why);
	else if (kind == LOAD_SETUP)
		log_error("PostgreSQL: cannot create the temporary table --dedupe-key needs: %s",
			  why);
	else
		log_error("PostgreSQL: %s: a setting needs fixing (SLUICE_TABLE, POSTGRES_DSN); "
			  "stopping, the batch stays unacked", why);
	return LOAD_FATAL;
}

static enum load_result load_step_result(struct loader *l, enum pgc_progress r)
{
	if (r == PGC_PENDING)
		return LOAD_PENDING;
	enum load_job kind = l->job;
	l->job = LOAD_IDLE;
	if (r == PGC_FAILED)
		return load_failed(l, kind);
	if (kind == LOAD_PIECE) {
		l->last_failed = false;
		return load_next(l);
	}
	if (l->isolating)
		log_warn("batch settled: %u rows loaded, %u dead-lettered%s",
			 l->batch->nrows - l->found, l->found,
			 l->cfg->dead_letter == DEAD_LETTER_TABLE ? "" : " (rejected)");
	l->isolating = false;
	return LOAD_DONE;
}

enum load_result load_step(struct loader *l) { return load_step_result(l, pgc_step(&l->pgc)); }
