/* Dead letters: the table rows PostgreSQL rejected go to (default
 * sluice_dead_letters), and the dead-letter row made from a rejected
 * envelope row. The body is kept byte for byte (bytea); text fields that
 * are not valid UTF-8, or hold NUL, get U+FFFD in their place, so that a
 * dead letter can always be written. */
#ifndef SLUICE_PG_DEADLETTER_H
#define SLUICE_PG_DEADLETTER_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "config.h"
#include "row/envelope.h"

#define DL_NCOLS 12

extern const struct column_def dl_columns[DL_NCOLS];

/* Append the dead-letter tuple for the envelope tuple env[0..n) that
 * failed with sqlstate and error (PostgreSQL's, or sluice's own for
 * messages that never reached it). */
void dl_row(struct buf *out, const struct config *cfg, const uint8_t *env, size_t n,
	    const char *sqlstate, const char *error, int64_t now_us);

#endif
