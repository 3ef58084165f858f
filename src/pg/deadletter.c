/* Dead-letter rows; see deadletter.h. */
#include "pg/deadletter.h"

#include <string.h>

#include "row/copybin.h"
#include "row/json.h"

const struct column_def dl_columns[DL_NCOLS] = {
	{"queue", {"text"}, NULL},
	{"exchange", {"text"}, NULL},
	{"routing_key", {"text"}, NULL},
	{"message_id", {"text"}, NULL},
	{"content_type", {"text"}, NULL},
	{"headers", {"jsonb"}, NULL},
	{"published_at", {"timestamp with time zone"}, NULL},
	{"body", {"bytea"}, NULL},
	{"sqlstate", {"text"}, NULL},
	{"error", {"text"}, NULL},
	{"target_table", {"text"}, NULL},
	{"failed_at", {"timestamp with time zone"}, "NOT NULL DEFAULT now()"},
};

/* Indices of the envelope fields we copy (envelope.c's order). */
enum { ENV_EXCHANGE, ENV_ROUTING_KEY, ENV_MESSAGE_ID, ENV_CONTENT_TYPE, ENV_HEADERS,
       ENV_PUBLISHED_AT, ENV_INGESTED_AT, ENV_BODY };

/* A text field PostgreSQL will take: invalid UTF-8 and NUL become U+FFFD. */
static void dl_text(struct buf *out, const uint8_t *p, size_t n)
{
	static const uint8_t fffd[3] = {0xef, 0xbf, 0xbd};
	size_t at = cbin_open(out);
	for (size_t i = 0; i < n;) {
		size_t ok = json_utf8_valid_prefix(p + i, n - i);
		const uint8_t *nul = memchr(p + i, 0, ok);
		size_t run = nul ? (size_t)(nul - (p + i)) : ok;
		buf_put(out, p + i, run);
		i += run;
		if (i < n) { /* a NUL or one invalid byte */
			buf_put(out, fffd, sizeof(fffd));
			i++;
		}
	}
	cbin_close(out, at);
}

static void dl_text_field(struct buf *out, const struct cbin_field *f)
{
	if (f->data)
		dl_text(out, f->data, f->len);
	else
		cbin_null(out);
}

static void dl_raw_field(struct buf *out, const struct cbin_field *f)
{
	if (f->data)
		cbin_bytes(out, f->data, f->len);
	else
		cbin_null(out);
}

void dl_row(struct buf *out, const struct config *cfg, const uint8_t *env, size_t n,
	    const char *sqlstate, const char *error, int64_t now_us)
{
	struct cbin_field f[ENV_NCOLS + 1] = {0};
	int nf = 0;
	if (!cbin_read_tuple(env, n, f, ENV_NCOLS + 1, &nf) || nf < ENV_NCOLS)
		memset(f, 0, sizeof(f)); /* cannot happen: we wrote it; keep what we can */

	cbin_tuple(out, DL_NCOLS);
	dl_text(out, (const uint8_t *)cfg->queue, strlen(cfg->queue));
	dl_text_field(out, &f[ENV_EXCHANGE]);
	dl_text_field(out, &f[ENV_ROUTING_KEY]);
	dl_text_field(out, &f[ENV_MESSAGE_ID]);
	dl_text_field(out, &f[ENV_CONTENT_TYPE]);
	dl_raw_field(out, &f[ENV_HEADERS]);	 /* jsonb we rendered: always valid */
	dl_raw_field(out, &f[ENV_PUBLISHED_AT]); /* timestamptz as written */
	struct cbin_field body = f[ENV_BODY];
	if (body.data && cfg->body_type == BODY_JSONB && body.len > 0) {
		body.data++; /* jsonb's version byte is ours, not the message's */
		body.len--;
	}
	dl_raw_field(out, &body);
	dl_text(out, (const uint8_t *)sqlstate, strlen(sqlstate));
	dl_text(out, (const uint8_t *)error, strlen(error));
	dl_text(out, (const uint8_t *)cfg->table, strlen(cfg->table));
	cbin_timestamptz(out, now_us);
}
