/* The envelope mapping: one message becomes one row of fixed columns
 * (exchange, routing key, message id, content type, headers, timestamps,
 * body). Rows are streamed into the COPY batch as the frames arrive: the
 * deliver method, then the content header, then the body fragments. */
#ifndef SLUICE_ROW_ENVELOPE_H
#define SLUICE_ROW_ENVELOPE_H

#include <amqp.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "config.h"

#define ENV_NCOLS 8
/* The largest body a row can hold: PostgreSQL's 1 GiB limit on a field
 * (MaxAllocSize), less room for its own headers. Larger bodies become dead
 * letters without their bytes. */
#define ENV_BODY_MAX ((UINT64_C(1) << 30) - 64)

/* A column sluice writes (envelope and dead-letter tables). */
struct column_def {
	const char *name;
	/* Types PostgreSQL accepts for this column in binary COPY, as
	 * format_type() spells them; the first is what we create. NULL for the
	 * body column, whose type follows --body-type. */
	const char *types[3];
	const char *create_extra; /* appended in CREATE TABLE, or NULL */
};

extern const struct column_def env_columns[ENV_NCOLS];
/* With --dedupe-key, one more column after the body: the key. */
extern const struct column_def env_dedupe_column;

/* Deliver method: starts a tuple of ncols fields (ENV_NCOLS, or one more
 * with a dedupe key) with exchange and routing key. */
void env_row_begin(struct buf *b, uint16_t ncols, amqp_bytes_t exchange,
		   amqp_bytes_t routing_key);
/* Content header: the remaining columns up to and including the body's
 * length word (and jsonb's version byte); the body bytes follow as they
 * arrive. now_us is the ingest time, Unix microseconds. Returns false when
 * the body is larger than ENV_BODY_MAX: the body field is then NULL and
 * the body's bytes must not be appended. */
bool env_row_props(struct buf *b, const amqp_basic_properties_t *p, uint64_t body_size,
		   enum body_type bt, int64_t now_us);

#endif
