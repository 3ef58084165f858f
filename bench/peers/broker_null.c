/* broker_null: the broker's limit for one consumer. Consumes QUEUE with the
 * same prefetch as the other systems, discards every message, and acks with
 * multiple=true every BATCH messages, LINGER_MS after the oldest unacked one
 * if fewer arrive, and on exit. Exits 0 once no message has arrived for
 * IDLE_EXIT_MS and everything received is acked.
 *
 * Build: cc -O2 -o build/peers/broker_null bench/peers/broker_null.c -lrabbitmq
 * Env:   RABBITMQ_URL QUEUE PREFETCH(2000) BATCH(1000) LINGER_MS(20) IDLE_EXIT_MS(1000)
 * Last line on stdout: one JSON object (msgs, first_msg_unix, last_commit_unix)
 * that bench/run.py reads; "commit" here is the last ack. */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static void die(const char *what, const char *detail)
{
	fprintf(stderr, "broker_null: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	exit(1);
}

static void check_reply(amqp_rpc_reply_t r, const char *what)
{
	switch (r.reply_type) {
	case AMQP_RESPONSE_NORMAL:
		return;
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		die(what, amqp_error_string2(r.library_error));
		break;
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD ||
		    r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			/* Both close methods start with reply_code, reply_text. */
			amqp_connection_close_t *m = r.reply.decoded;
			fprintf(stderr, "broker_null: %s: server closed: %u %.*s\n", what,
				m->reply_code, (int)m->reply_text.len, (char *)m->reply_text.bytes);
			exit(1);
		}
		die(what, "unexpected server method");
		break;
	default:
		die(what, "no reply");
	}
}

static long env_long(const char *name, long def)
{
	const char *v = getenv(name);
	if (!v || !*v)
		return def;
	char *end;
	long n = strtol(v, &end, 10);
	if (*end || n < 0)
		die("bad number in", name);
	return n;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double unix_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(void)
{
	const char *url_env = getenv("RABBITMQ_URL");
	const char *queue = getenv("QUEUE");
	long prefetch = env_long("PREFETCH", 2000);
	long batch = env_long("BATCH", 1000);
	long linger_ms = env_long("LINGER_MS", 20);
	long idle_ms = env_long("IDLE_EXIT_MS", 1000);
	if (!queue || !*queue)
		die("QUEUE is required", NULL);
	if (prefetch > 65535)
		die("PREFETCH must be at most 65535", NULL);
	if (batch < 1)
		batch = 1;

	char *url = strdup(url_env && *url_env ? url_env : "amqp://guest:guest@127.0.0.1:5672/");
	struct amqp_connection_info ci;
	if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK)
		die("cannot parse RABBITMQ_URL", NULL);
	if (!*ci.vhost) /* "amqp://host/" means the default vhost, as in other clients */
		ci.vhost = (char *)"/";

	amqp_connection_state_t conn = amqp_new_connection();
	amqp_socket_t *sock = amqp_tcp_socket_new(conn);
	if (!sock)
		die("cannot create socket", NULL);
	int st = amqp_socket_open(sock, ci.host, ci.port);
	if (st != AMQP_STATUS_OK)
		die("cannot connect", amqp_error_string2(st));
	check_reply(amqp_login(conn, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user,
			       ci.password),
		    "login");
	amqp_channel_open(conn, 1);
	check_reply(amqp_get_rpc_reply(conn), "channel.open");
	amqp_basic_qos(conn, 1, 0, (uint16_t)prefetch, 0);
	check_reply(amqp_get_rpc_reply(conn), "basic.qos");
	amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
			   amqp_empty_table);
	check_reply(amqp_get_rpc_reply(conn), "basic.consume");

	uint64_t msgs = 0, last_tag = 0, acked_tag = 0;
	int64_t last_msg_ms = mono_ms(), oldest_unacked_ms = 0;
	double first_unix = 0, last_ack_unix = 0;

	for (;;) {
		int64_t now = mono_ms();
		int64_t wait = last_msg_ms + idle_ms - now;
		if (last_tag != acked_tag && oldest_unacked_ms + linger_ms - now < wait)
			wait = oldest_unacked_ms + linger_ms - now;
		if (wait < 0)
			wait = 0;
		struct timeval tv = {.tv_sec = wait / 1000, .tv_usec = (wait % 1000) * 1000};

		amqp_envelope_t env;
		amqp_maybe_release_buffers(conn);
		amqp_rpc_reply_t r = amqp_consume_message(conn, &env, &tv, 0);

		if (r.reply_type == AMQP_RESPONSE_NORMAL) {
			if (msgs++ == 0)
				first_unix = unix_now();
			last_msg_ms = mono_ms();
			if (last_tag == acked_tag)
				oldest_unacked_ms = last_msg_ms;
			last_tag = env.delivery_tag;
			amqp_destroy_envelope(&env);
			if (last_tag - acked_tag >= (uint64_t)batch) {
				if (amqp_basic_ack(conn, 1, last_tag, 1) != AMQP_STATUS_OK)
					die("basic.ack failed", NULL);
				acked_tag = last_tag;
				last_ack_unix = unix_now();
			}
			continue;
		}
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
		    r.library_error == AMQP_STATUS_TIMEOUT) {
			now = mono_ms();
			if (last_tag != acked_tag && now - oldest_unacked_ms >= linger_ms) {
				if (amqp_basic_ack(conn, 1, last_tag, 1) != AMQP_STATUS_OK)
					die("basic.ack failed", NULL);
				acked_tag = last_tag;
				last_ack_unix = unix_now();
			}
			if (now - last_msg_ms >= idle_ms && last_tag == acked_tag)
				break;
			continue;
		}
		if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
		    r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
			/* A method other than basic.deliver: read it to see what it is. */
			amqp_frame_t frame;
			if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK)
				die("reading frame failed", NULL);
			if (frame.frame_type == AMQP_FRAME_METHOD &&
			    (frame.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
			     frame.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD))
				die("server closed the channel or connection", NULL);
			continue; /* e.g. basic.cancel-ok or a stray header */
		}
		check_reply(r, "consume");
	}

	if (last_tag != acked_tag) {
		amqp_basic_ack(conn, 1, last_tag, 1);
		last_ack_unix = unix_now();
	}
	/* channel.close is synchronous: once close-ok arrives, the broker has
	 * processed the acks sent before it. */
	check_reply(amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS), "channel.close");
	check_reply(amqp_connection_close(conn, AMQP_REPLY_SUCCESS), "connection.close");
	amqp_destroy_connection(conn);
	free(url);

	printf("{\"system\":\"broker-null\",\"msgs\":%llu,\"first_msg_unix\":%.6f,"
	       "\"last_commit_unix\":%.6f}\n",
	       (unsigned long long)msgs, first_unix, last_ack_unix);
	return 0;
}
