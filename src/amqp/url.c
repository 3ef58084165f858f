/* AMQP URI parsing on top of rabbitmq-c's amqp_parse_url, plus the query
 * parameters it does not handle. Error texts name RABBITMQ_URL but never echo
 * the URL itself, since it carries the password. */
#include "amqp/url.h"

#include <amqp.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MQ_DEFAULT_HEARTBEAT 60

static int url_int_param(const char *name, const char *val, long max, int *out,
			 char *err, size_t errlen)
{
	char *end;
	errno = 0;
	long v = strtol(val, &end, 10);
	if (errno || end == val || *end || v < 0 || v > max) {
		snprintf(err, errlen,
			 "RABBITMQ_URL: query parameter %s must be an integer from 0 to %ld",
			 name, max);
		return -1;
	}
	*out = (int)v;
	return 0;
}

/* Errors name no parameter: a malformed URL's "query" may hold the tail
 * of a password. */
static int url_query(char *q, struct mq_url *u, char *err, size_t errlen)
{
	for (char *save = NULL, *kv = strtok_r(q, "&", &save); kv;
	     kv = strtok_r(NULL, "&", &save)) {
		char *val = strchr(kv, '=');
		if (!val) {
			snprintf(err, errlen, "RABBITMQ_URL: a query parameter has no value "
				 "(expected name=value)");
			return -1;
		}
		*val++ = '\0';
		int rc;
		if (strcmp(kv, "heartbeat") == 0)
			rc = url_int_param(kv, val, 65535, &u->heartbeat, err, errlen);
		else if (strcmp(kv, "frame_max") == 0)
			rc = url_int_param(kv, val, INT_MAX, &u->frame_max, err, errlen);
		else if (strcmp(kv, "channel_max") == 0)
			rc = url_int_param(kv, val, 65535, &u->channel_max, err, errlen);
		else {
			snprintf(err, errlen,
				 "RABBITMQ_URL: unsupported query parameter "
				 "(supported: heartbeat, frame_max, channel_max)");
			return -1;
		}
		if (rc < 0)
			return -1;
	}
	/* AMQP 0-9-1 section 4.2.3: frame-max may not be below 4096. */
	if (u->frame_max != 0 && u->frame_max < 4096) {
		snprintf(err, errlen, "RABBITMQ_URL: frame_max must be 0 or at least 4096");
		return -1;
	}
	return 0;
}

int mq_url_parse(const char *url, struct mq_url *out, char *err, size_t errlen)
{
	struct amqp_connection_info info;

	*out = (struct mq_url){.heartbeat = MQ_DEFAULT_HEARTBEAT};
	out->storage = strdup(url);
	if (!out->storage) {
		snprintf(err, errlen, "RABBITMQ_URL: out of memory");
		return -1;
	}
	/* The query starts after the userinfo: a raw '?' in a password makes
	 * the URL invalid, and must not turn its tail into a "parameter" that
	 * an error message would quote. */
	char *at = strrchr(out->storage, '@');
	char *query = strchr(at ? at : out->storage, '?');
	if (query)
		*query++ = '\0';
	if (amqp_parse_url(out->storage, &info) != AMQP_STATUS_OK) {
		snprintf(err, errlen,
			 "RABBITMQ_URL is not a valid AMQP URI "
			 "(expected amqp://user:password@host:port/vhost)");
		goto fail;
	}
	if (info.ssl) {
		snprintf(err, errlen,
			 "RABBITMQ_URL: amqps:// (TLS) is not supported yet; use amqp://");
		goto fail;
	}
	out->user = info.user;
	out->password = info.password;
	out->host = info.host;
	out->port = info.port;
	/* "amqp://host/" has an empty vhost by the letter of the URI spec;
	 * pika and the seed consumer treat it as "/", and so do we. */
	out->vhost = info.vhost[0] ? info.vhost : "/";
	if (query && url_query(query, out, err, errlen) < 0)
		goto fail;
	return 0;
fail:
	mq_url_free(out);
	return -1;
}

void mq_url_redacted(const struct mq_url *u, char *out, size_t outlen)
{
	snprintf(out, outlen, "amqp://%s@%s:%d/%s", u->user, u->host, u->port,
		 strcmp(u->vhost, "/") == 0 ? "" : u->vhost);
}

void mq_url_free(struct mq_url *u)
{
	free(u->storage);
	*u = (struct mq_url){0};
}
