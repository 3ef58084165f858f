/* Frame writer; see frame.h. Method payloads larger than MQF_METHOD_MAX do
 * not occur for the methods sluice sends (start-ok's client properties are
 * the largest, well under 1 KiB). */
#include "amqp/frame.h"

#include <amqp_framing.h>

#define MQF_HEADER 7
#define MQF_METHOD_MAX 4096

void mqf_protocol_header(struct buf *out)
{
	static const uint8_t hdr[8] = {'A', 'M', 'Q', 'P', 0, 0, 9, 1};
	buf_put(out, hdr, sizeof(hdr));
}

int mqf_method(struct buf *out, amqp_channel_t channel, amqp_method_number_t id,
	       void *decoded)
{
	uint8_t *p = buf_reserve(out, MQF_HEADER + 4 + MQF_METHOD_MAX + 1);
	amqp_bytes_t args = {.bytes = p + MQF_HEADER + 4, .len = MQF_METHOD_MAX};
	int n = amqp_encode_method(id, decoded, args);
	if (n < 0)
		return n;
	uint32_t size = 4 + (uint32_t)n;
	p[0] = AMQP_FRAME_METHOD;
	buf_set_u16(p + 1, channel);
	buf_set_u32(p + 3, size);
	buf_set_u32(p + MQF_HEADER, id);
	p[MQF_HEADER + size] = AMQP_FRAME_END;
	out->len += MQF_HEADER + size + 1;
	return 0;
}

void mqf_heartbeat(struct buf *out)
{
	static const uint8_t hb[8] = {AMQP_FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, AMQP_FRAME_END};
	buf_put(out, hb, sizeof(hb));
}
