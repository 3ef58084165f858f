/* JSON rendering of AMQP field tables; see json.h for the mapping. Written
 * here rather than with a JSON library because the input is already a typed
 * tree from rabbitmq-c and the output goes straight into a COPY buffer. */
#include "row/json.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <time.h>

static void json_table_at(struct buf *out, const amqp_table_t *t, int depth);

size_t json_utf8_valid_prefix(const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint8_t c = p[i];
		size_t len;
		uint32_t cp;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			len = 2, cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			len = 3, cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			len = 4, cp = c & 0x07;
		} else {
			return i;
		}
		if (n - i < len)
			return i;
		for (size_t k = 1; k < len; k++) {
			if ((p[i + k] & 0xc0) != 0x80)
				return i;
			cp = (cp << 6) | (p[i + k] & 0x3f);
		}
		static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
		if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return i;
		i += len;
	}
	return n;
}

static void json_string(struct buf *out, const uint8_t *p, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	buf_put_u8(out, '"');
	size_t i = 0;
	while (i < n) {
		size_t ok = json_utf8_valid_prefix(p + i, n - i);
		for (size_t end = i + ok; i < end; i++) {
			/* Copy the run of bytes that need no escaping in one go. */
			size_t run = i;
			while (run < end && p[run] >= 0x20 && p[run] != '"' && p[run] != '\\')
				run++;
			buf_put(out, p + i, run - i);
			if ((i = run) == end)
				break;
			uint8_t c = p[i];
			if (c == '"' || c == '\\') {
				buf_put_u8(out, '\\');
				buf_put_u8(out, c);
			} else if (c == 0) {
				buf_put_str(out, "\\ufffd");
			} else { /* other control characters */
				char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
				buf_put(out, esc, sizeof(esc));
			}
		}
		if (i < n) { /* one invalid byte */
			buf_put_str(out, "\\ufffd");
			i++;
		}
	}
	buf_put_u8(out, '"');
}

static void json_base64(struct buf *out, const uint8_t *p, size_t n)
{
	static const char enc[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	buf_put_u8(out, '"');
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < n)
			v |= p[i + 2];
		char q[4] = {enc[(v >> 18) & 63], enc[(v >> 12) & 63],
			     i + 1 < n ? enc[(v >> 6) & 63] : '=', i + 2 < n ? enc[v & 63] : '='};
		buf_put(out, q, 4);
	}
	buf_put_u8(out, '"');
}

/* Integers are most of what headers hold; printf is ten times slower. */
static void json_u64(struct buf *out, uint64_t v, bool negative)
{
	char tmp[21];
	int i = sizeof(tmp);
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	if (negative)
		tmp[--i] = '-';
	buf_put(out, tmp + i, sizeof(tmp) - (size_t)i);
}

static void json_i64(struct buf *out, int64_t v)
{
	json_u64(out, v < 0 ? 0 - (uint64_t)v : (uint64_t)v, v < 0);
}

static void json_double(struct buf *out, double d)
{
	if (isnan(d))
		buf_put_str(out, "\"NaN\"");
	else if (isinf(d))
		buf_put_str(out, d > 0 ? "\"Infinity\"" : "\"-Infinity\"");
	else {
		char tmp[32];
		int n = snprintf(tmp, sizeof(tmp), "%.17g", d);
		buf_put(out, tmp, (size_t)n);
	}
}

/* AMQP decimal: value * 10^-decimals, written exactly as digits. */
static void json_decimal(struct buf *out, amqp_decimal_t d)
{
	char digits[16];
	int64_t v = (int32_t)d.value;
	int n = snprintf(digits, sizeof(digits), "%" PRIu64, (uint64_t)(v < 0 ? -v : v));
	int scale = d.decimals;
	if (v < 0)
		buf_put_u8(out, '-');
	if (scale == 0) {
		buf_put(out, digits, (size_t)n);
		return;
	}
	if (n <= scale) {
		buf_put_str(out, "0.");
		for (int i = n; i < scale; i++)
			buf_put_u8(out, '0');
		buf_put(out, digits, (size_t)n);
	} else {
		buf_put(out, digits, (size_t)(n - scale));
		buf_put_u8(out, '.');
		buf_put(out, digits + n - scale, (size_t)scale);
	}
}

static void json_timestamp(struct buf *out, uint64_t secs)
{
	struct tm tm;
	time_t t = (time_t)secs;
	char tmp[40];
	if (secs > INT64_MAX || !gmtime_r(&t, &tm)) {
		json_u64(out, secs, false);
		return;
	}
	size_t n = strftime(tmp, sizeof(tmp), "\"%Y-%m-%dT%H:%M:%SZ\"", &tm);
	buf_put(out, tmp, n);
}

/* Tables nest; a hostile message could nest deeply, and rabbitmq-c already
 * decoded it recursively, but we stop rendering at a sane depth. */
#define JSON_MAX_DEPTH 64

static void json_value(struct buf *out, const amqp_field_value_t *v, int depth)
{
	if (depth > JSON_MAX_DEPTH) {
		buf_put_str(out, "null");
		return;
	}
	switch (v->kind) {
	case AMQP_FIELD_KIND_BOOLEAN: buf_put_str(out, v->value.boolean ? "true" : "false"); break;
	case AMQP_FIELD_KIND_I8: json_i64(out, v->value.i8); break;
	case AMQP_FIELD_KIND_U8: json_u64(out, v->value.u8, false); break;
	case AMQP_FIELD_KIND_I16: json_i64(out, v->value.i16); break;
	case AMQP_FIELD_KIND_U16: json_u64(out, v->value.u16, false); break;
	case AMQP_FIELD_KIND_I32: json_i64(out, v->value.i32); break;
	case AMQP_FIELD_KIND_U32: json_u64(out, v->value.u32, false); break;
	case AMQP_FIELD_KIND_I64: json_i64(out, v->value.i64); break;
	case AMQP_FIELD_KIND_U64: json_u64(out, v->value.u64, false); break;
	case AMQP_FIELD_KIND_F32: json_double(out, v->value.f32); break;
	case AMQP_FIELD_KIND_F64: json_double(out, v->value.f64); break;
	case AMQP_FIELD_KIND_DECIMAL: json_decimal(out, v->value.decimal); break;
	case AMQP_FIELD_KIND_UTF8:
		json_string(out, v->value.bytes.bytes, v->value.bytes.len);
		break;
	case AMQP_FIELD_KIND_BYTES:
		json_base64(out, v->value.bytes.bytes, v->value.bytes.len);
		break;
	case AMQP_FIELD_KIND_TIMESTAMP: json_timestamp(out, v->value.u64); break;
	case AMQP_FIELD_KIND_ARRAY:
		buf_put_u8(out, '[');
		for (int i = 0; i < v->value.array.num_entries; i++) {
			if (i)
				buf_put_u8(out, ',');
			json_value(out, &v->value.array.entries[i], depth + 1);
		}
		buf_put_u8(out, ']');
		break;
	case AMQP_FIELD_KIND_TABLE:
		json_table_at(out, &v->value.table, depth + 1);
		break;
	case AMQP_FIELD_KIND_VOID:
	default: buf_put_str(out, "null"); break;
	}
}

static void json_table_at(struct buf *out, const amqp_table_t *t, int depth)
{
	buf_put_u8(out, '{');
	for (int i = 0; i < t->num_entries; i++) {
		if (i)
			buf_put_u8(out, ',');
		json_string(out, t->entries[i].key.bytes, t->entries[i].key.len);
		buf_put_u8(out, ':');
		json_value(out, &t->entries[i].value, depth);
	}
	buf_put_u8(out, '}');
}

void json_table(struct buf *out, const amqp_table_t *t) { json_table_at(out, t, 0); }
