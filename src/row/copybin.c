/* Binary COPY header and trailer; the per-field writers are inline in the
 * header because they run once per column per row. */
#include "row/copybin.h"

void cbin_header(struct buf *b)
{
	static const uint8_t sig[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0};
	buf_put(b, sig, sizeof(sig));
	buf_put_u32(b, 0); /* flags: no OIDs */
	buf_put_u32(b, 0); /* header extension length */
}

void cbin_trailer(struct buf *b) { buf_put_u16(b, UINT16_MAX); }
