/* AMQP connection state machine; see conn.h. Method numbers and field
 * layouts are AMQP 0-9-1 (amqp0-9-1.pdf); negotiation rules follow
 * RabbitMQ's docs (heartbeats.html: if either side offers 0 the greater
 * value wins, else the smaller). */
#include "amqp/conn.h"

#include <amqp_framing.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "amqp/frame.h"
#include "log.h"
#include "version.h"

#define MQ_IN_SIZE (256 * 1024)
#define MQ_CHANNEL 1
#define MQ_CONNECT_TIMEOUT_MS 10000
#define MQ_HANDSHAKE_TIMEOUT_MS 30000
#define MQ_DEFAULT_FRAME_MAX 131072
/* amqp_handle_input reports a protocol header from the server (it rejects
 * our version) as this frame type; rabbitmq-c keeps the name private. */
#define MQ_FRAME_PROTOCOL_HEADER 'A'

/* States before deliveries can flow, bounded by MQ_HANDSHAKE_TIMEOUT_MS. */
#define MQ_HANDSHAKE                                                            \
	(1u << MQ_WAIT_START | 1u << MQ_WAIT_TUNE | 1u << MQ_WAIT_OPEN_OK |     \
	 1u << MQ_WAIT_CHANNEL_OK | 1u << MQ_WAIT_QOS_OK | 1u << MQ_WAIT_CONSUME_OK)

static const char *const mq_names[MQ_NSTATES] = {
	"closed", "wait-start", "wait-tune", "wait-open-ok", "wait-channel-ok",
	"wait-qos-ok", "wait-consume-ok", "consuming", "cancelling", "cancelled",
	"closing", "failed",
};

const char *mq_state_name(enum mq_state s) { return mq_names[s]; }

#define B(s) (1u << (s))
static const unsigned mq_next[MQ_NSTATES] = {
	[MQ_CLOSED] = B(MQ_WAIT_START) | B(MQ_FAILED),
	[MQ_WAIT_START] = B(MQ_WAIT_TUNE) | B(MQ_CLOSING) | B(MQ_FAILED),
	[MQ_WAIT_TUNE] = B(MQ_WAIT_OPEN_OK) | B(MQ_CLOSING) | B(MQ_FAILED),
	[MQ_WAIT_OPEN_OK] = B(MQ_WAIT_CHANNEL_OK) | B(MQ_CLOSING) | B(MQ_FAILED),
	[MQ_WAIT_CHANNEL_OK] = B(MQ_WAIT_QOS_OK) | B(MQ_CLOSING) | B(MQ_FAILED),
	[MQ_WAIT_QOS_OK] = B(MQ_WAIT_CONSUME_OK) | B(MQ_CLOSING) | B(MQ_FAILED),
	[MQ_WAIT_CONSUME_OK] = B(MQ_CONSUMING) | B(MQ_CLOSING) | B(MQ_FAILED),
	[MQ_CONSUMING] = B(MQ_CANCELLING) | B(MQ_CANCELLED) | B(MQ_FAILED),
	[MQ_CANCELLING] = B(MQ_CANCELLED) | B(MQ_FAILED),
	[MQ_CANCELLED] = B(MQ_CLOSING) | B(MQ_FAILED),
	[MQ_CLOSING] = B(MQ_CLOSED) | B(MQ_FAILED),
	[MQ_FAILED] = 0,
};
#undef B

static void mq_set_state(struct mq *m, enum mq_state to)
{
	if (!(mq_next[m->state] & (1u << to))) {
		log_error("internal error: AMQP state %s -> %s is not a transition",
			  mq_names[m->state], mq_names[to]);
		abort();
	}
	log_debug("AMQP state %s -> %s", mq_names[m->state], mq_names[to]);
	m->state = to;
	m->transitions++;
}

static bool mq_fail(struct mq *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Record why the connection is unusable. */
static bool mq_fail(struct mq *m, const char *fmt, ...)
{
	if (m->state == MQ_FAILED)
		return false;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m->reason, sizeof(m->reason), fmt, ap);
	va_end(ap);
	log_debug("RabbitMQ: %s", m->reason); /* the owner decides how loud */
	mq_set_state(m, MQ_FAILED);
	return false;
}

static bool mq_send_method(struct mq *m, amqp_channel_t ch, amqp_method_number_t id,
			   void *decoded)
{
	int rc = mqf_method(&m->out, ch, id, decoded);
	if (rc < 0)
		return mq_fail(m, "cannot encode %s: %s", amqp_method_name(id),
			       amqp_error_string2(rc));
	return true;
}

static int mq_connect_fd(const struct mq_url *u, char *why, size_t whylen)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	struct addrinfo *res, *ai;
	char port[8];
	int fd = -1, err = 0;

	snprintf(port, sizeof(port), "%d", u->port);
	int rc = getaddrinfo(u->host, port, &hints, &res);
	if (rc != 0) {
		snprintf(why, whylen, "cannot resolve host %s: %s", u->host, gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			err = errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS) {
			struct pollfd pfd = {.fd = fd, .events = POLLOUT};
			socklen_t len = sizeof(err);
			rc = poll(&pfd, 1, MQ_CONNECT_TIMEOUT_MS);
			if (rc == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
			    err == 0)
				break;
			if (rc == 0)
				err = ETIMEDOUT;
		} else {
			err = errno;
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		snprintf(why, whylen, "cannot connect to %s:%d: %s", u->host, u->port,
			 strerror(err));
		return -1;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

bool mq_open(struct mq *m, const struct mq_params *p, const struct mq_handler *h)
{
	/* The buffers outlive connections: see mq_disconnect. */
	*m = (struct mq){.p = *p, .h = *h, .fd = -1, .state = MQ_CLOSED,
			 .in = m->in ? m->in : malloc(MQ_IN_SIZE), .out = m->out,
			 .sending = m->sending};
	buf_reset(&m->out);
	buf_reset(&m->sending);
	m->codec = amqp_new_connection();
	if (!m->in || !m->codec)
		return mq_fail(m, "out of memory");
	char why[256];
	m->fd = mq_connect_fd(p->url, why, sizeof(why));
	if (m->fd < 0)
		return mq_fail(m, "%s (RABBITMQ_URL)", why);
	mqf_protocol_header(&m->out);
	mq_set_state(m, MQ_WAIT_START);
	return true;
}

void mq_disconnect(struct mq *m, struct loop *l)
{
	if (m->fd >= 0) {
		loop_cancel(l, m->fd);
		close(m->fd);
	}
	if (m->codec)
		amqp_destroy_connection(m->codec);
	m->fd = -1;
	m->codec = NULL;
	m->recv_armed = false;
	if (m->state != MQ_FAILED)
		m->state = MQ_CLOSED;
}

void mq_free(struct mq *m)
{
	if (m->fd >= 0)
		close(m->fd);
	if (m->codec)
		amqp_destroy_connection(m->codec);
	free(m->in);
	buf_free(&m->out);
	buf_free(&m->sending);
	*m = (struct mq){.fd = -1};
}

/* ---- handshake ---------------------------------------------------------- */

static bool mq_has_plain(amqp_bytes_t mechanisms)
{
	const char *s = mechanisms.bytes;
	size_t n = mechanisms.len, i = 0;
	while (i < n) {
		size_t j = i;
		while (j < n && s[j] != ' ')
			j++;
		if (j - i == 5 && memcmp(s + i, "PLAIN", 5) == 0)
			return true;
		i = j + 1;
	}
	return false;
}

static bool mq_on_start(struct mq *m, const amqp_connection_start_t *s)
{
	if (s->version_major != 0 || s->version_minor != 9)
		return mq_fail(m, "broker speaks AMQP %d-%d, sluice needs 0-9-1",
			       s->version_major, s->version_minor);
	if (!mq_has_plain(s->mechanisms))
		return mq_fail(m, "broker does not offer PLAIN authentication");

	amqp_table_entry_t caps[] = {
		{.key = amqp_cstring_bytes("consumer_cancel_notify"),
		 .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1}},
		{.key = amqp_cstring_bytes("basic.nack"),
		 .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1}},
		/* Without it RabbitMQ answers bad credentials by dropping the
		 * socket; with it, by connection.close 403 (auth-notification.html). */
		{.key = amqp_cstring_bytes("authentication_failure_close"),
		 .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1}},
	};
	amqp_table_entry_t props[] = {
		{.key = amqp_cstring_bytes("product"),
		 .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("sluice")}},
		{.key = amqp_cstring_bytes("version"),
		 .value = {.kind = AMQP_FIELD_KIND_UTF8,
			   .value.bytes = amqp_cstring_bytes(SLUICE_VERSION)}},
		{.key = amqp_cstring_bytes("connection_name"),
		 .value = {.kind = AMQP_FIELD_KIND_UTF8,
			   .value.bytes = amqp_cstring_bytes(m->p.connection_name)}},
		{.key = amqp_cstring_bytes("capabilities"),
		 .value = {.kind = AMQP_FIELD_KIND_TABLE,
			   .value.table = {.num_entries = 3, .entries = caps}}},
	};

	/* SASL PLAIN (RFC 4616): authzid NUL authcid NUL password. */
	size_t ulen = strlen(m->p.url->user), plen = strlen(m->p.url->password);
	char *resp = malloc(ulen + plen + 2);
	if (!resp)
		return mq_fail(m, "out of memory");
	resp[0] = '\0';
	memcpy(resp + 1, m->p.url->user, ulen);
	resp[1 + ulen] = '\0';
	memcpy(resp + 2 + ulen, m->p.url->password, plen);

	amqp_connection_start_ok_t ok = {
		.client_properties = {.num_entries = 4, .entries = props},
		.mechanism = amqp_cstring_bytes("PLAIN"),
		.response = {.len = ulen + plen + 2, .bytes = resp},
		.locale = amqp_cstring_bytes("en_US"),
	};
	bool sent = mq_send_method(m, 0, AMQP_CONNECTION_START_OK_METHOD, &ok);
	explicit_bzero(resp, ulen + plen + 2);
	free(resp);
	if (sent)
		mq_set_state(m, MQ_WAIT_TUNE);
	return sent;
}

/* 0 means "no limit" on either side: take the smaller real limit. */
static uint32_t mq_min_limit(uint32_t server, uint32_t client)
{
	if (server == 0)
		return client;
	if (client == 0)
		return server;
	return server < client ? server : client;
}

static bool mq_on_tune(struct mq *m, const amqp_connection_tune_t *t)
{
	const struct mq_url *u = m->p.url;
	uint16_t channel_max = (uint16_t)mq_min_limit(t->channel_max, (uint32_t)u->channel_max);
	uint32_t frame_max = mq_min_limit(t->frame_max, (uint32_t)u->frame_max);
	if (frame_max == 0)
		frame_max = MQ_DEFAULT_FRAME_MAX;
	uint16_t hb = (t->heartbeat == 0 || u->heartbeat == 0)
			      ? (uint16_t)(t->heartbeat > u->heartbeat ? t->heartbeat : u->heartbeat)
			      : (uint16_t)(t->heartbeat < u->heartbeat ? t->heartbeat : u->heartbeat);
	if (channel_max != 0 && channel_max < MQ_CHANNEL)
		return mq_fail(m, "broker allows no channels (channel_max 0)");

	amqp_connection_tune_ok_t ok = {
		.channel_max = channel_max, .frame_max = frame_max, .heartbeat = hb};
	if (!mq_send_method(m, 0, AMQP_CONNECTION_TUNE_OK_METHOD, &ok))
		return false;
	int rc = amqp_tune_connection(m->codec, channel_max, (int)frame_max, hb);
	if (rc != AMQP_STATUS_OK)
		return mq_fail(m, "cannot apply tune parameters: %s", amqp_error_string2(rc));
	m->heartbeat_s = hb;

	amqp_connection_open_t open = {.virtual_host = amqp_cstring_bytes(u->vhost)};
	if (!mq_send_method(m, 0, AMQP_CONNECTION_OPEN_METHOD, &open))
		return false;
	log_debug("tuned: frame_max %u, channel_max %u, heartbeat %u s", frame_max,
		  channel_max, hb);
	mq_set_state(m, MQ_WAIT_OPEN_OK);
	return true;
}

static bool mq_on_open_ok(struct mq *m)
{
	amqp_channel_open_t open = {0};
	if (!mq_send_method(m, MQ_CHANNEL, AMQP_CHANNEL_OPEN_METHOD, &open))
		return false;
	mq_set_state(m, MQ_WAIT_CHANNEL_OK);
	return true;
}

static bool mq_on_channel_open_ok(struct mq *m)
{
	amqp_basic_qos_t qos = {.prefetch_count = m->p.prefetch};
	if (!mq_send_method(m, MQ_CHANNEL, AMQP_BASIC_QOS_METHOD, &qos))
		return false;
	mq_set_state(m, MQ_WAIT_QOS_OK);
	return true;
}

static bool mq_on_qos_ok(struct mq *m)
{
	amqp_basic_consume_t consume = {
		.queue = amqp_cstring_bytes(m->p.queue),
		.consumer_tag = amqp_empty_bytes, /* the broker names it */
		.no_ack = 0,
	};
	if (!mq_send_method(m, MQ_CHANNEL, AMQP_BASIC_CONSUME_METHOD, &consume))
		return false;
	mq_set_state(m, MQ_WAIT_CONSUME_OK);
	return true;
}

static bool mq_on_consume_ok(struct mq *m, const amqp_basic_consume_ok_t *ok)
{
	size_t n = ok->consumer_tag.len;
	if (n >= sizeof(m->consumer_tag))
		return mq_fail(m, "consumer tag longer than 255 bytes");
	memcpy(m->consumer_tag, ok->consumer_tag.bytes, n);
	m->consumer_tag[n] = '\0';
	mq_set_state(m, MQ_CONSUMING);
	log_info("consuming queue '%s' (prefetch %u, heartbeat %d s)", m->p.queue,
		 m->p.prefetch, m->heartbeat_s);
	return true;
}

/* ---- closes from the broker --------------------------------------------- */

static const char *mq_close_hint(uint16_t code)
{
	switch (code) {
	case AMQP_ACCESS_REFUSED:
		return " (check the user, password and vhost in RABBITMQ_URL)";
	case AMQP_NOT_FOUND:
		return " (check SLUICE_QUEUE and the vhost in RABBITMQ_URL)";
	case AMQP_NOT_ALLOWED:
		return " (check the vhost in RABBITMQ_URL)";
	default:
		return "";
	}
}

/* Closes that no reconnect can cure: a setting is wrong. */
static bool mq_close_is_config(uint16_t code)
{
	return code == AMQP_ACCESS_REFUSED || code == AMQP_NOT_FOUND || code == AMQP_NOT_ALLOWED;
}

static bool mq_on_connection_close(struct mq *m, const amqp_connection_close_t *c)
{
	m->config_error = mq_close_is_config(c->reply_code);
	amqp_connection_close_ok_t ok = {0};
	mq_send_method(m, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
	return mq_fail(m, "broker closed the connection: %d %.*s%s", c->reply_code,
		       (int)c->reply_text.len, (const char *)c->reply_text.bytes,
		       mq_close_hint(c->reply_code));
}

static bool mq_on_channel_close(struct mq *m, const amqp_channel_close_t *c)
{
	m->config_error = mq_close_is_config(c->reply_code);
	amqp_channel_close_ok_t ok = {0};
	mq_send_method(m, MQ_CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
	return mq_fail(m, "broker closed the channel: %d %.*s%s", c->reply_code,
		       (int)c->reply_text.len, (const char *)c->reply_text.bytes,
		       mq_close_hint(c->reply_code));
}

/* ---- frame dispatch ----------------------------------------------------- */

static bool mq_expect(struct mq *m, enum mq_state want, amqp_method_number_t id)
{
	if (m->state == want)
		return true;
	return mq_fail(m, "protocol error: %s in state %s", amqp_method_name(id),
		       mq_names[m->state]);
}

static bool mq_method(struct mq *m, amqp_method_number_t id, void *d)
{
	switch (id) {
	case AMQP_CONNECTION_START_METHOD:
		return mq_expect(m, MQ_WAIT_START, id) && mq_on_start(m, d);
	case AMQP_CONNECTION_TUNE_METHOD:
		return mq_expect(m, MQ_WAIT_TUNE, id) && mq_on_tune(m, d);
	case AMQP_CONNECTION_OPEN_OK_METHOD:
		return mq_expect(m, MQ_WAIT_OPEN_OK, id) && mq_on_open_ok(m);
	case AMQP_CHANNEL_OPEN_OK_METHOD:
		return mq_expect(m, MQ_WAIT_CHANNEL_OK, id) && mq_on_channel_open_ok(m);
	case AMQP_BASIC_QOS_OK_METHOD:
		return mq_expect(m, MQ_WAIT_QOS_OK, id) && mq_on_qos_ok(m);
	case AMQP_BASIC_CONSUME_OK_METHOD:
		return mq_expect(m, MQ_WAIT_CONSUME_OK, id) && mq_on_consume_ok(m, d);
	case AMQP_BASIC_DELIVER_METHOD:
		if ((m->state != MQ_CONSUMING && m->state != MQ_CANCELLING) ||
		    m->content != MQ_CONTENT_NONE)
			return mq_expect(m, MQ_CONSUMING, id);
		m->content = MQ_CONTENT_HEADER;
		m->h.deliver(m->h.ctx, d);
		return true;
	case AMQP_BASIC_CANCEL_OK_METHOD:
		if (m->state == MQ_CANCELLING)
			mq_set_state(m, MQ_CANCELLED);
		return true;
	case AMQP_BASIC_CANCEL_METHOD: {
		/* consumer_cancel_notify: the queue was deleted or the node
		 * holding it went away. */
		const amqp_basic_cancel_t *c = d;
		if (!c->nowait) {
			amqp_basic_cancel_ok_t ok = {.consumer_tag = c->consumer_tag};
			mq_send_method(m, MQ_CHANNEL, AMQP_BASIC_CANCEL_OK_METHOD, &ok);
		}
		log_warn("the broker cancelled our consumer on queue '%s' (deleted?)",
			 m->p.queue);
		snprintf(m->reason, sizeof(m->reason), "consumer cancelled by the broker");
		if (m->state == MQ_CONSUMING || m->state == MQ_CANCELLING)
			mq_set_state(m, MQ_CANCELLED);
		return true;
	}
	case AMQP_QUEUE_DECLARE_OK_METHOD:
		m->depth_pending = false;
		m->h.depth(m->h.ctx, ((amqp_queue_declare_ok_t *)d)->message_count);
		return true;
	case AMQP_CONNECTION_CLOSE_METHOD:
		return mq_on_connection_close(m, d);
	case AMQP_CONNECTION_CLOSE_OK_METHOD:
		if (!mq_expect(m, MQ_CLOSING, id))
			return false;
		mq_set_state(m, MQ_CLOSED);
		return true;
	case AMQP_CHANNEL_CLOSE_METHOD:
		return mq_on_channel_close(m, d);
	case AMQP_CONNECTION_BLOCKED_METHOD:
	case AMQP_CONNECTION_UNBLOCKED_METHOD:
		return true; /* concerns publishers only */
	default:
		return mq_fail(m, "protocol error: unexpected %s", amqp_method_name(id));
	}
}

static void mq_message_done(struct mq *m)
{
	m->content = MQ_CONTENT_NONE;
	m->h.message_end(m->h.ctx);
}

static bool mq_frame(struct mq *m, const amqp_frame_t *f)
{
	/* Content only ever flows on our one channel. */
	if ((f->frame_type == AMQP_FRAME_HEADER || f->frame_type == AMQP_FRAME_BODY) &&
	    f->channel != MQ_CHANNEL)
		return mq_fail(m, "protocol error: content on channel %u", f->channel);
	switch (f->frame_type) {
	case AMQP_FRAME_METHOD:
		return mq_method(m, f->payload.method.id, f->payload.method.decoded);
	case AMQP_FRAME_HEADER:
		if (m->content != MQ_CONTENT_HEADER)
			return mq_fail(m, "protocol error: content header without a delivery");
		/* rabbitmq-c decodes the properties of whatever class the frame
		 * names; only basic's are an amqp_basic_properties_t. */
		if (f->payload.properties.class_id != AMQP_BASIC_CLASS)
			return mq_fail(m, "protocol error: content header of class %u",
				       f->payload.properties.class_id);
		m->body_left = f->payload.properties.body_size;
		m->h.header(m->h.ctx, f->payload.properties.decoded, m->body_left);
		if (m->body_left == 0)
			mq_message_done(m);
		else
			m->content = MQ_CONTENT_BODY;
		return true;
	case AMQP_FRAME_BODY: {
		size_t len = f->payload.body_fragment.len;
		if (m->content != MQ_CONTENT_BODY || len > m->body_left)
			return mq_fail(m, "protocol error: unexpected content body");
		m->h.body(m->h.ctx, f->payload.body_fragment.bytes, len);
		m->body_left -= len;
		if (m->body_left == 0)
			mq_message_done(m);
		return true;
	}
	case AMQP_FRAME_HEARTBEAT:
		return true;
	case MQ_FRAME_PROTOCOL_HEADER:
		return mq_fail(m, "the broker rejected AMQP 0-9-1 (it answered with a "
				  "protocol header)");
	default:
		return mq_fail(m, "protocol error: frame type %d", f->frame_type);
	}
}

bool mq_input(struct mq *m, const uint8_t *p, size_t n)
{
	amqp_bytes_t data = {.len = n, .bytes = (void *)p};
	while (data.len > 0 && m->state != MQ_FAILED) {
		amqp_frame_t f;
		int rc = amqp_handle_input(m->codec, data, &f);
		if (rc < 0)
			return mq_fail(m, "cannot decode input: %s", amqp_error_string2(rc));
		data.bytes = (uint8_t *)data.bytes + rc;
		data.len -= (size_t)rc;
		if (f.frame_type == 0)
			continue;
		if (!mq_frame(m, &f))
			return false;
		/* The frame's memory is ours to drop now that it is handled:
		 * everything kept was copied out. This keeps the codec's pools
		 * from growing with the stream. */
		amqp_maybe_release_buffers_on_channel(m->codec, f.channel);
	}
	return m->state != MQ_FAILED;
}

/* ---- I/O ---------------------------------------------------------------- */

/* Holding (mq_hold): the receive completes only once `lowat` bytes are
 * in the socket (SO_RCVLOWAT: TCP's poll honours it, and a receive armed
 * on an empty socket waits in that poll), so one wake-up carries a few
 * hundred deliveries instead of a few. The kernel still wakes us early when
 * the receive buffer runs short (tcp_rmem_pressure), so a hold never
 * stalls the stream; a non-blocking first attempt may return less. */
static void mq_set_lowat(struct mq *m, int lowat)
{
	if (m->lowat == lowat || m->fd < 0)
		return;
	/* Lowering it wakes a pending receive at once if enough is there
	 * (tcp_set_rcvlowat calls tcp_data_ready). */
	if (setsockopt(m->fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat)) == 0)
		m->lowat = lowat;
}

void mq_hold(struct mq *m, int lowat, int64_t until_ms)
{
	if (m->heartbeat_s > 0) {
		/* Heartbeats sit in the socket too: read them in time. */
		int64_t hb_at = m->last_recv_ms + (int64_t)m->heartbeat_s * 1000 / 2;
		until_ms = until_ms < hb_at ? until_ms : hb_at;
	}
	m->hold_lowat = lowat > 1 ? lowat : 1;
	m->hold_until_ms = until_ms;
}

bool mq_unhold(struct mq *m)
{
	m->hold_lowat = 1;
	if (m->lowat <= 1)
		return false;
	mq_set_lowat(m, 1);
	int queued = 0;
	return m->recv_armed && ioctl(m->fd, FIONREAD, &queued) == 0 && queued > 0;
}

int mq_pump(struct mq *m, struct loop *l, int64_t now_ms)
{
	int rc;
	if (m->fd < 0 || m->state == MQ_FAILED)
		return 0;
	if (!m->recv_armed && !m->recv_paused && m->state != MQ_CLOSED) {
		mq_set_lowat(m, now_ms < m->hold_until_ms ? m->hold_lowat : 1);
		rc = loop_recv(l, m->fd, m->in, MQ_IN_SIZE, m->p.tag_recv);
		if (rc < 0)
			return rc;
		m->recv_armed = true;
	}
	if (m->sending.len == 0 && m->out.len > 0) {
		struct buf t = m->sending;
		m->sending = m->out;
		m->out = t;
		m->sending_off = 0;
		rc = loop_send(l, m->fd, m->sending.data, m->sending.len, m->p.tag_send);
		if (rc < 0)
			return rc;
		m->last_send_ms = now_ms;
	}
	return 0;
}

bool mq_on_recv(struct mq *m, int res, int64_t now_ms)
{
	m->recv_armed = false;
	if (res == 0) {
		if (m->state == MQ_CLOSING || m->state == MQ_CLOSED) {
			if (m->state == MQ_CLOSING)
				mq_set_state(m, MQ_CLOSED);
			return true;
		}
		return mq_fail(m, "the broker closed the connection%s",
			       m->state == MQ_WAIT_TUNE
				       ? " during login (check the user and password in RABBITMQ_URL)"
				       : "");
	}
	if (res < 0)
		return mq_fail(m, "receive failed: %s", strerror(-res));
	m->last_recv_ms = now_ms;
	return mq_input(m, m->in, (size_t)res);
}

bool mq_on_send(struct mq *m, int res)
{
	if (res < 0) {
		m->sending.len = 0;
		return mq_fail(m, "send failed: %s", strerror(-res));
	}
	m->sending_off += (size_t)res;
	if (m->sending_off < m->sending.len) {
		/* Short send: move the rest to the front of `out`. */
		size_t rest = m->sending.len - m->sending_off;
		struct buf merged = {0};
		buf_put(&merged, m->sending.data + m->sending_off, rest);
		buf_put(&merged, m->out.data, m->out.len);
		buf_free(&m->out);
		m->out = merged;
	}
	m->sending.len = 0;
	m->sending_off = 0;
	return true;
}

int64_t mq_tick(struct mq *m, int64_t now_ms)
{
	if ((1u << m->state) & MQ_HANDSHAKE) {
		if (!m->handshake_deadline_ms)
			m->handshake_deadline_ms = now_ms + MQ_HANDSHAKE_TIMEOUT_MS;
		if (now_ms >= m->handshake_deadline_ms) {
			mq_fail(m, "no answer to the AMQP handshake in %d s (is RABBITMQ_URL a "
				   "RabbitMQ listener?)", MQ_HANDSHAKE_TIMEOUT_MS / 1000);
			return INT64_MAX;
		}
		if (m->state == MQ_WAIT_START || m->state == MQ_WAIT_TUNE)
			return m->handshake_deadline_ms;
	}
	int64_t lowat_at = INT64_MAX;
	if (m->lowat > 1) {
		if (now_ms >= m->hold_until_ms)
			mq_set_lowat(m, 1);
		else
			lowat_at = m->hold_until_ms;
	}
	if (m->heartbeat_s == 0 || m->state == MQ_FAILED || m->state == MQ_CLOSED)
		return lowat_at;
	int64_t hb_ms = (int64_t)m->heartbeat_s * 1000;
	if (m->recv_paused) /* we stopped reading on purpose */
		m->last_recv_ms = now_ms;
	/* Spec 4.2.7: a peer silent for two intervals is dead. */
	if (now_ms - m->last_recv_ms > 2 * hb_ms) {
		mq_fail(m, "no data from the broker for %lld s: missed heartbeats",
			(long long)(now_ms - m->last_recv_ms) / 1000);
		return INT64_MAX;
	}
	if (now_ms - m->last_send_ms >= hb_ms / 2 && m->out.len == 0) {
		mqf_heartbeat(&m->out);
		m->last_send_ms = now_ms;
	}
	int64_t send_at = m->last_send_ms + hb_ms / 2;
	int64_t dead_at = m->last_recv_ms + 2 * hb_ms + 1;
	int64_t next = send_at < dead_at ? send_at : dead_at;
	return next < lowat_at ? next : lowat_at;
}

/* ---- requests from the owner ------------------------------------------ */

void mq_ack(struct mq *m, uint64_t delivery_tag)
{
	amqp_basic_ack_t ack = {.delivery_tag = delivery_tag, .multiple = 1};
	mq_send_method(m, MQ_CHANNEL, AMQP_BASIC_ACK_METHOD, &ack);
}

void mq_reject(struct mq *m, uint64_t delivery_tag)
{
	amqp_basic_reject_t r = {.delivery_tag = delivery_tag, .requeue = 0};
	mq_send_method(m, MQ_CHANNEL, AMQP_BASIC_REJECT_METHOD, &r);
}

void mq_cancel(struct mq *m)
{
	if (m->state != MQ_CONSUMING)
		return;
	amqp_basic_cancel_t c = {.consumer_tag = amqp_cstring_bytes(m->consumer_tag)};
	if (mq_send_method(m, MQ_CHANNEL, AMQP_BASIC_CANCEL_METHOD, &c))
		mq_set_state(m, MQ_CANCELLING);
}

void mq_close(struct mq *m, const char *why)
{
	if (!(mq_next[m->state] & (1u << MQ_CLOSING)))
		return;
	amqp_connection_close_t c = {.reply_code = AMQP_REPLY_SUCCESS,
				     .reply_text = amqp_cstring_bytes(why)};
	if (mq_send_method(m, 0, AMQP_CONNECTION_CLOSE_METHOD, &c))
		mq_set_state(m, MQ_CLOSING);
}

void mq_request_depth(struct mq *m)
{
	if (m->depth_pending || (m->state != MQ_CONSUMING && m->state != MQ_CANCELLED))
		return;
	amqp_queue_declare_t q = {.queue = amqp_cstring_bytes(m->p.queue), .passive = 1};
	if (mq_send_method(m, MQ_CHANNEL, AMQP_QUEUE_DECLARE_METHOD, &q))
		m->depth_pending = true;
}
