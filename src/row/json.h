/* AMQP field tables (message headers) rendered as JSON text that PostgreSQL's
 * jsonb accepts. Pure: bytes in, text out; fuzzed. */
#ifndef SLUICE_ROW_JSON_H
#define SLUICE_ROW_JSON_H

#include <amqp.h>
#include <stdbool.h>

#include "buf.h"

/* Render a table as a JSON object. Strings that are not valid UTF-8, and
 * NUL characters (which jsonb cannot hold), become U+FFFD; byte arrays
 * ('x') become base64 strings; timestamps ISO-8601 UTC strings; NaN and
 * infinities the strings "NaN", "Infinity", "-Infinity". */
void json_table(struct buf *out, const amqp_table_t *t);
/* Length of the valid UTF-8 prefix of p[0..n) (PostgreSQL's rules: no
 * overlongs, no surrogates, nothing above U+10FFFF). */
size_t json_utf8_valid_prefix(const uint8_t *p, size_t n);

#endif
