/* One shard's AMQP 0-9-1 connection with one channel, driven by the shard's
 * loop: handshake (PLAIN auth, tune, open), basic.qos and basic.consume with
 * manual acks, content assembly of deliveries, acks, heartbeats, cancel and
 * close. rabbitmq-c is only the codec: amqp_handle_input decodes bytes we
 * received through the ring; frames we send are built by amqp/frame.c. */
#ifndef SLUICE_AMQP_CONN_H
#define SLUICE_AMQP_CONN_H

#include <amqp.h>
#include <stdbool.h>
#include <stdint.h>

#include "amqp/url.h"
#include "buf.h"
#include "io/loop.h"

enum mq_state {
	MQ_CLOSED,	    /* no connection */
	MQ_WAIT_START,	    /* protocol header sent; awaiting connection.start */
	MQ_WAIT_TUNE,	    /* start-ok sent; awaiting connection.tune */
	MQ_WAIT_OPEN_OK,    /* tune-ok and connection.open sent */
	MQ_WAIT_CHANNEL_OK, /* channel.open sent */
	MQ_WAIT_QOS_OK,	    /* basic.qos sent */
	MQ_WAIT_CONSUME_OK, /* basic.consume sent */
	MQ_CONSUMING,	    /* deliveries flow */
	MQ_CANCELLING,	    /* basic.cancel sent; deliveries may still arrive */
	MQ_CANCELLED,	    /* no more deliveries will arrive; acks still go out */
	MQ_CLOSING,	    /* connection.close sent; awaiting close-ok */
	MQ_FAILED,	    /* transport, protocol or broker error; reason says which */
	MQ_NSTATES
};

/* What the connection tells its owner. The amqp_* arguments point into the
 * codec's frame memory and are valid only during the call. */
struct mq_handler {
	void *ctx;
	void (*deliver)(void *ctx, const amqp_basic_deliver_t *d);
	void (*header)(void *ctx, const amqp_basic_properties_t *p, uint64_t body_size);
	void (*body)(void *ctx, const void *bytes, size_t len);
	void (*message_end)(void *ctx);
	void (*depth)(void *ctx, uint32_t ready);
};

struct mq_params {
	const struct mq_url *url;
	const char *queue;
	uint16_t prefetch;
	const char *connection_name; /* shown in the broker's management UI */
	uint64_t tag_recv, tag_send; /* loop tags of our completions */
};

struct mq {
	struct mq_params p;
	struct mq_handler h;
	enum mq_state state;
	int fd;
	amqp_connection_state_t codec;
	uint8_t *in;		 /* receive buffer */
	bool recv_armed;
	bool recv_paused;	 /* backpressure: owner stops reading */
	int lowat;		 /* SO_RCVLOWAT as set; 0 = never set (the kernel's 1) */
	int hold_lowat;		 /* mq_hold: wake for this many bytes ... */
	int64_t hold_until_ms;	 /* ... or at this time, whichever comes first */
	struct buf out;		 /* frames queued, not yet handed to the kernel */
	struct buf sending;	 /* frames in one send in flight (never realloc'd then) */
	size_t sending_off;
	char consumer_tag[256];
	int heartbeat_s;	 /* negotiated; 0 = off */
	int64_t last_recv_ms, last_send_ms;
	int64_t handshake_deadline_ms; /* set on the first tick */
	uint64_t body_left;	 /* bytes of the current message still to come */
	enum { MQ_CONTENT_NONE, MQ_CONTENT_HEADER, MQ_CONTENT_BODY } content;
	bool depth_pending;
	char reason[512];	 /* why the connection failed or closed */
	bool config_error;	 /* the broker refused a setting (403, 404, 530) */
	uint64_t transitions;
};

/* Connect the TCP socket (blocking, bounded by a timeout) and queue the
 * protocol header. Returns false with mq->reason set. m must be zeroed or
 * have been opened before (its buffers are reused). */
bool mq_open(struct mq *m, const struct mq_params *p, const struct mq_handler *h)
	__attribute__((warn_unused_result));
/* Drop the connection: withdraw its operations from the loop and close the
 * socket. The buffers stay (a cancelled operation may still be finishing
 * with them) until mq_free, after the loop is gone. */
void mq_disconnect(struct mq *m, struct loop *l);
void mq_free(struct mq *m);

/* Hand queued frames to the kernel and keep a receive armed. */
int mq_pump(struct mq *m, struct loop *l, int64_t now_ms);
/* Completions of our receive and send; false when the connection failed. */
bool mq_on_recv(struct mq *m, int res, int64_t now_ms) __attribute__((warn_unused_result));
bool mq_on_send(struct mq *m, int res) __attribute__((warn_unused_result));
/* The owner does not need deliveries before until_ms (monotonic) unless
 * about `lowat` bytes of them have arrived: wake for the receive only then
 * (a heartbeat due earlier shortens the hold). Applies to the next receive
 * armed; lowat <= 1 is no hold. Call it every turn, before mq_pump. */
void mq_hold(struct mq *m, int lowat, int64_t until_ms);
/* The owner needs the deliveries now: end a hold. True when a receive is
 * armed and bytes wait in the socket: they complete in the next wait. */
bool mq_unhold(struct mq *m);
/* Heartbeats: send when due, fail when the peer has been silent too long;
 * and the end of a hold. Returns the next deadline
 * (monotonic ms) or INT64_MAX. */
int64_t mq_tick(struct mq *m, int64_t now_ms);

/* Feed received bytes to the codec and dispatch frames (exposed for tests
 * and fuzzing; mq_on_recv calls it). */
bool mq_input(struct mq *m, const uint8_t *p, size_t n) __attribute__((warn_unused_result));

void mq_ack(struct mq *m, uint64_t delivery_tag);
/* basic.reject without requeue: to the queue's dead-letter exchange, if it
 * has one (RabbitMQ drops the message otherwise). */
void mq_reject(struct mq *m, uint64_t delivery_tag);
void mq_cancel(struct mq *m);
void mq_close(struct mq *m, const char *why);
/* Ask for the queue's ready count (passive queue.declare); answered via
 * handler->depth. Ignored while one request is outstanding. */
void mq_request_depth(struct mq *m);
const char *mq_state_name(enum mq_state s);

#endif
