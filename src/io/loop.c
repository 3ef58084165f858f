/* Backend selection: io_uring unless told otherwise or unavailable. */
#include <stdio.h>

#include "io/loop.h"

/* Enough for a shard's handful of operations, with room for bursts. */
#define LOOP_URING_ENTRIES 64

struct loop *loop_open(enum loop_choice choice, char *why, size_t whylen)
{
	why[0] = '\0';
	if (choice == LOOP_EPOLL)
		return loop_epoll_new(why, whylen);
	struct loop *l = loop_uring_new(LOOP_URING_ENTRIES, why, whylen);
	if (l || choice == LOOP_URING)
		return l;
	char epoll_why[128];
	l = loop_epoll_new(epoll_why, sizeof(epoll_why));
	if (!l)
		snprintf(why, whylen, "%s", epoll_why);
	return l;
}
