/* AMQP URI parsing (amqp://user:pass@host:port/vhost?heartbeat=&frame_max=&channel_max=).
 * rabbitmq-c's amqp_parse_url does the authority and percent-decoding; this
 * adds the query parameters and the pika-compatible "/" default vhost. */
#ifndef SLUICE_AMQP_URL_H
#define SLUICE_AMQP_URL_H

#include <stdbool.h>
#include <stddef.h>

struct mq_url {
	char *storage; /* owns every string below */
	const char *user;
	const char *password;
	const char *host;
	const char *vhost;
	int port;
	int heartbeat;	 /* seconds; 0 disables */
	int frame_max;	 /* bytes; 0 = accept the server's */
	int channel_max; /* 0 = accept the server's */
};

/* Returns 0, or -1 with a reason in err that never contains the password. */
int mq_url_parse(const char *url, struct mq_url *out, char *err, size_t errlen);
/* "amqp://user@host:port/vhost": safe for logs. */
void mq_url_redacted(const struct mq_url *u, char *out, size_t outlen);
void mq_url_free(struct mq_url *u);

#endif
