/* Dedupe keys; see dedupe.h. Body hashes use OpenSSL's SHA-256 (already
 * linked for libpq's TLS). */
#include "row/dedupe.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "row/copybin.h"

bool dedupe_init(struct dedupe *d, const struct config *cfg)
{
	*d = (struct dedupe){.kind = cfg->dedupe, .header = cfg->dedupe_header};
	if (d->kind == DEDUPE_BODY && !(d->sha = EVP_MD_CTX_new()))
		return false;
	return true;
}

void dedupe_free(struct dedupe *d)
{
	EVP_MD_CTX_free(d->sha);
	buf_free(&d->key);
	d->sha = NULL;
}

/* Strings as they are, integers in decimal; other kinds have no one
 * obvious text, so they are not keys. */
static bool dedupe_field(struct buf *out, const amqp_field_value_t *v)
{
	char num[24];
	int n;
	switch (v->kind) {
	case AMQP_FIELD_KIND_UTF8:
	case AMQP_FIELD_KIND_BYTES:
		buf_put(out, v->value.bytes.bytes, v->value.bytes.len);
		return true;
	case AMQP_FIELD_KIND_I8: n = snprintf(num, sizeof(num), "%d", v->value.i8); break;
	case AMQP_FIELD_KIND_U8: n = snprintf(num, sizeof(num), "%u", v->value.u8); break;
	case AMQP_FIELD_KIND_I16: n = snprintf(num, sizeof(num), "%d", v->value.i16); break;
	case AMQP_FIELD_KIND_U16: n = snprintf(num, sizeof(num), "%u", v->value.u16); break;
	case AMQP_FIELD_KIND_I32: n = snprintf(num, sizeof(num), "%" PRId32, v->value.i32); break;
	case AMQP_FIELD_KIND_U32: n = snprintf(num, sizeof(num), "%" PRIu32, v->value.u32); break;
	case AMQP_FIELD_KIND_I64: n = snprintf(num, sizeof(num), "%" PRId64, v->value.i64); break;
	case AMQP_FIELD_KIND_U64: n = snprintf(num, sizeof(num), "%" PRIu64, v->value.u64); break;
	default: return false;
	}
	buf_put(out, num, (size_t)n);
	return true;
}

void dedupe_props(struct dedupe *d, const amqp_basic_properties_t *p)
{
	buf_reset(&d->key);
	d->have = false;
	switch (d->kind) {
	case DEDUPE_NONE:
		return;
	case DEDUPE_MESSAGE_ID:
		d->have = p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG;
		if (d->have)
			buf_put(&d->key, p->message_id.bytes, p->message_id.len);
		d->why = "the message has no message_id (--dedupe-key message_id)";
		return;
	case DEDUPE_HEADER:
		d->why = "the message lacks the header named by --dedupe-key";
		if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
			return;
		for (int i = 0; i < p->headers.num_entries; i++) {
			const amqp_table_entry_t *e = &p->headers.entries[i];
			if (e->key.len != strlen(d->header) ||
			    memcmp(e->key.bytes, d->header, e->key.len) != 0)
				continue;
			d->have = dedupe_field(&d->key, &e->value);
			d->why = "the header named by --dedupe-key is not a string or an integer";
			return;
		}
		return;
	case DEDUPE_BODY:
		d->have = EVP_DigestInit_ex(d->sha, EVP_sha256(), NULL) == 1;
		d->why = "cannot hash the body (OpenSSL)";
		return;
	}
}

void dedupe_body(struct dedupe *d, const void *bytes, size_t len)
{
	if (d->kind == DEDUPE_BODY && d->have)
		d->have = EVP_DigestUpdate(d->sha, bytes, len) == 1;
}

bool dedupe_write(struct dedupe *d, struct buf *row)
{
	if (d->kind == DEDUPE_BODY && d->have) {
		static const char hex[] = "0123456789abcdef";
		uint8_t md[EVP_MAX_MD_SIZE];
		unsigned n = 0;
		d->have = EVP_DigestFinal_ex(d->sha, md, &n) == 1;
		for (unsigned i = 0; d->have && i < n; i++) {
			buf_put_u8(&d->key, (uint8_t)hex[md[i] >> 4]);
			buf_put_u8(&d->key, (uint8_t)hex[md[i] & 15]);
		}
	}
	if (!d->have)
		return false;
	cbin_bytes(row, d->key.data, d->key.len);
	return true;
}
