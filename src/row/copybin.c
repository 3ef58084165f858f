/* Binary COPY header, trailer and tuple reader; the per-field writers are
 * inline in the header because they run once per column per row. */
#include "row/copybin.h"

const uint8_t cbin_head[CBIN_HEAD_LEN] = {
	'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0, /* signature */
	0, 0, 0, 0,						 /* flags: no OIDs */
	0, 0, 0, 0,						 /* header extension length */
};
const uint8_t cbin_tail[CBIN_TAIL_LEN] = {0xff, 0xff};

void cbin_header(struct buf *b) { buf_put(b, cbin_head, sizeof(cbin_head)); }

void cbin_trailer(struct buf *b) { buf_put(b, cbin_tail, sizeof(cbin_tail)); }

static uint32_t cbin_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

size_t cbin_read_tuple(const uint8_t *p, size_t n, struct cbin_field *f, int max, int *nfields)
{
	if (n < 2)
		return 0;
	int count = p[0] << 8 | p[1];
	size_t at = 2;
	if (count > max)
		return 0;
	for (int i = 0; i < count; i++) {
		if (n - at < 4)
			return 0;
		uint32_t len = cbin_get_u32(p + at);
		at += 4;
		if (len == UINT32_MAX) {
			f[i] = (struct cbin_field){.data = NULL, .len = 0};
			continue;
		}
		if (len > n - at)
			return 0;
		f[i] = (struct cbin_field){.data = p + at, .len = len};
		at += len;
	}
	*nfields = count;
	return at;
}
