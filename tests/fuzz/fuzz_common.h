/* Shared by the fuzz targets: a fatal invariant check, a strict JSON
 * validator (what PostgreSQL's jsonb input accepts) and a walker for one
 * tuple of the binary COPY rows that src/row/envelope.c writes. */
#ifndef SLUICE_FUZZ_COMMON_H
#define SLUICE_FUZZ_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "row/envelope.h"
#include "row/json.h"

/* run.sh runs the fuzzers with -close_fd_mask=3 (sluice logs every protocol
 * error), so invariant failures go to a copy of stderr taken at start-up. */
static int fuzz_errfd = 2;

static __attribute__((unused)) void fuzz_save_stderr(void)
{
	int fd = dup(2);
	if (fd >= 0)
		fuzz_errfd = fd;
}

__attribute__((format(printf, 3, 4), noreturn)) static void
fuzz_fail(const char *file, int line, const char *fmt, ...)
{
	char msg[1024];
	int n = snprintf(msg, sizeof(msg), "%s:%d: invariant failed: ", file, line);
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(msg) - 2)
		n = (int)sizeof(msg) - 2;
	msg[n++] = '\n';
	ssize_t w = write(fuzz_errfd, msg, (size_t)n);
	(void)w;
	abort(); /* libFuzzer saves the input as a crash */
}

#define FUZZ_CHECK(cond, ...)                                                  \
	do {                                                                   \
		if (!(cond))                                                   \
			fuzz_fail(__FILE__, __LINE__, __VA_ARGS__);            \
	} while (0)

/* ---- strict JSON (RFC 8259 plus jsonb's rules) ------------------------- */

struct json_in {
	const uint8_t *p, *end;
	const char *why; /* first error */
	int depth;
};

static __attribute__((unused)) bool json_err(struct json_in *j, const char *why)
{
	if (!j->why)
		j->why = why;
	return false;
}

static __attribute__((unused)) void json_ws(struct json_in *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

static __attribute__((unused)) int json_hex4(const uint8_t *p)
{
	int v = 0;
	for (int i = 0; i < 4; i++) {
		int c = p[i], d;
		if (c >= '0' && c <= '9')
			d = c - '0';
		else if (c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			d = c - 'A' + 10;
		else
			return -1;
		v = v * 16 + d;
	}
	return v;
}

static __attribute__((unused)) bool json_str(struct json_in *j)
{
	if (j->p >= j->end || *j->p != '"')
		return json_err(j, "expected a string");
	j->p++;
	while (j->p < j->end) {
		uint8_t c = *j->p;
		if (c == '"') {
			j->p++;
			return true;
		}
		if (c < 0x20)
			return json_err(j, "unescaped control character in a string");
		if (c != '\\') {
			/* Raw UTF-8 is checked separately over the whole text. */
			j->p++;
			continue;
		}
		if (j->end - j->p < 2)
			return json_err(j, "truncated escape");
		c = j->p[1];
		if (c && strchr("\"\\/bfnrt", c)) {
			j->p += 2;
			continue;
		}
		if (c != 'u')
			return json_err(j, "bad escape");
		if (j->end - j->p < 6)
			return json_err(j, "truncated \\u escape");
		int u = json_hex4(j->p + 2);
		if (u < 0)
			return json_err(j, "bad \\u escape");
		j->p += 6;
		/* jsonb: "\u0000 cannot be converted to text" */
		if (u == 0)
			return json_err(j, "\\u0000 (jsonb rejects it)");
		if (u >= 0xdc00 && u <= 0xdfff)
			return json_err(j, "lone low surrogate escape");
		if (u >= 0xd800 && u <= 0xdbff) {
			if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u')
				return json_err(j, "high surrogate escape without a low one");
			int lo = json_hex4(j->p + 2);
			if (lo < 0xdc00 || lo > 0xdfff)
				return json_err(j, "high surrogate escape without a low one");
			j->p += 6;
		}
	}
	return json_err(j, "unterminated string");
}

static __attribute__((unused)) bool json_digits(struct json_in *j)
{
	const uint8_t *s = j->p;
	while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
		j->p++;
	return j->p > s;
}

static __attribute__((unused)) bool json_num(struct json_in *j)
{
	if (j->p < j->end && *j->p == '-')
		j->p++;
	if (j->p < j->end && *j->p == '0')
		j->p++;
	else if (j->p >= j->end || *j->p < '1' || *j->p > '9' || !json_digits(j))
		return json_err(j, "bad number");
	if (j->p < j->end && *j->p == '.') {
		j->p++;
		if (!json_digits(j))
			return json_err(j, "bad fraction");
	}
	if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
		j->p++;
		if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
			j->p++;
		if (!json_digits(j))
			return json_err(j, "bad exponent");
	}
	return true;
}

static __attribute__((unused)) bool json_lit(struct json_in *j, const char *w)
{
	size_t n = strlen(w);
	if ((size_t)(j->end - j->p) < n || memcmp(j->p, w, n) != 0)
		return json_err(j, "unexpected character");
	j->p += n;
	return true;
}

static __attribute__((unused)) bool json_val(struct json_in *j)
{
	json_ws(j);
	if (j->p >= j->end)
		return json_err(j, "expected a value");
	if (++j->depth > 10000)
		return json_err(j, "nesting too deep");
	bool ok;
	switch (*j->p) {
	case '{':
		j->p++;
		json_ws(j);
		if (j->p < j->end && *j->p == '}') {
			j->p++;
			ok = true;
			break;
		}
		for (;;) {
			json_ws(j);
			if (!json_str(j))
				return false;
			json_ws(j);
			if (j->p >= j->end || *j->p != ':')
				return json_err(j, "expected ':'");
			j->p++;
			if (!json_val(j))
				return false;
			json_ws(j);
			if (j->p < j->end && *j->p == ',') {
				j->p++;
				continue;
			}
			if (j->p < j->end && *j->p == '}') {
				j->p++;
				break;
			}
			return json_err(j, "expected ',' or '}'");
		}
		ok = true;
		break;
	case '[':
		j->p++;
		json_ws(j);
		if (j->p < j->end && *j->p == ']') {
			j->p++;
			ok = true;
			break;
		}
		for (;;) {
			if (!json_val(j))
				return false;
			json_ws(j);
			if (j->p < j->end && *j->p == ',') {
				j->p++;
				continue;
			}
			if (j->p < j->end && *j->p == ']') {
				j->p++;
				break;
			}
			return json_err(j, "expected ',' or ']'");
		}
		ok = true;
		break;
	case '"': ok = json_str(j); break;
	case 't': ok = json_lit(j, "true"); break;
	case 'f': ok = json_lit(j, "false"); break;
	case 'n': ok = json_lit(j, "null"); break;
	default: ok = json_num(j); break;
	}
	j->depth--;
	return ok;
}

/* NULL when p[0..n) is one JSON value, valid UTF-8 without NUL bytes, as
 * jsonb's input function requires; else what is wrong. */
static __attribute__((unused)) const char *json_check(const uint8_t *p, size_t n, size_t *at)
{
	*at = 0;
	if (memchr(p, 0, n)) {
		*at = (size_t)((const uint8_t *)memchr(p, 0, n) - p);
		return "NUL byte";
	}
	size_t ok = json_utf8_valid_prefix(p, n);
	if (ok != n) {
		*at = ok;
		return "invalid UTF-8";
	}
	struct json_in j = {.p = p, .end = p + n};
	if (json_val(&j)) {
		json_ws(&j);
		if (j.p != j.end)
			json_err(&j, "trailing characters");
	}
	*at = (size_t)(j.p - p);
	return j.why;
}

/* Fail with context when p[0..n) is not valid JSON for jsonb. */
#define FUZZ_CHECK_JSON(p, n)                                                          \
	do {                                                                           \
		size_t json_at_;                                                       \
		const char *json_why_ = json_check((p), (n), &json_at_);              \
		FUZZ_CHECK(!json_why_, "JSON text invalid at byte %zu of %zu: %s: %.*s", \
			   json_at_, (size_t)(n), json_why_, (int)((n) < 200 ? (n) : 200), \
			   (const char *)(p));                                         \
	} while (0)

/* ---- binary COPY tuples -------------------------------------------------- */

static __attribute__((unused)) uint32_t fuzz_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* One field of a tuple: its length word (-1 = NULL) and bytes. */
struct fuzz_field {
	int32_t len;
	const uint8_t *data;
};

/* Split one tuple at p[0..n) into its ENV_NCOLS fields; returns the tuple's
 * size, or 0 (with why) when it is not a well-formed tuple of that many
 * fields. */
static __attribute__((unused)) size_t fuzz_tuple(const uint8_t *p, size_t n,
						 struct fuzz_field f[ENV_NCOLS], const char **why)
{
	size_t off = 2;
	if (n < 2 || (p[0] << 8 | p[1]) != ENV_NCOLS) {
		*why = "field count is not ENV_NCOLS";
		return 0;
	}
	for (int i = 0; i < ENV_NCOLS; i++) {
		if (n - off < 4) {
			*why = "truncated length word";
			return 0;
		}
		f[i].len = (int32_t)fuzz_u32(p + off);
		off += 4;
		f[i].data = p + off;
		if (f[i].len == -1)
			continue;
		if (f[i].len < 0) {
			*why = "negative field length other than -1";
			return 0;
		}
		if (n - off < (size_t)f[i].len) {
			*why = "field longer than the bytes present";
			return 0;
		}
		off += (size_t)f[i].len;
	}
	return off;
}

/* Column invariants of one envelope row, whatever the input was. */
static __attribute__((unused)) void fuzz_check_row(const struct fuzz_field f[ENV_NCOLS],
						   enum body_type bt)
{
	FUZZ_CHECK(f[0].len >= 0 && f[1].len >= 0, "exchange/routing key NULL");
	if (f[4].len != -1) {
		FUZZ_CHECK(f[4].len >= 1 && f[4].data[0] == 1, "headers jsonb version byte");
		FUZZ_CHECK_JSON(f[4].data + 1, (size_t)f[4].len - 1);
	}
	FUZZ_CHECK(f[5].len == -1 || f[5].len == 8, "published_at length %d", f[5].len);
	FUZZ_CHECK(f[6].len == 8, "ingested_at length %d", f[6].len);
	FUZZ_CHECK(f[7].len >= 0, "body NULL");
	if (bt == BODY_JSONB)
		FUZZ_CHECK(f[7].len >= 1 && f[7].data[0] == 1, "body jsonb version byte");
}

#endif
