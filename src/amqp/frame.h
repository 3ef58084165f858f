/* AMQP 0-9-1 frame writer: rabbitmq-c encodes method arguments, we write the
 * 7-byte frame header (type, channel, size) and the 0xCE frame end around
 * them (AMQP 0-9-1 section 4.2.3). Pure: bytes out, no I/O. */
#ifndef SLUICE_AMQP_FRAME_H
#define SLUICE_AMQP_FRAME_H

#include <amqp.h>

#include "buf.h"

/* The 8-byte protocol header a client opens with (section 4.2.2). */
void mqf_protocol_header(struct buf *out);
/* Append one method frame; returns 0 or a negative AMQP_STATUS_*. */
int mqf_method(struct buf *out, amqp_channel_t channel, amqp_method_number_t id,
	       void *decoded);
void mqf_heartbeat(struct buf *out);

#endif
