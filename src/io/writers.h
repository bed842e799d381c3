/* writers.h — file writers beyond the public API. */
#ifndef GRAFT_IO_WRITERS_H
#define GRAFT_IO_WRITERS_H

#include "graft/graft.h"

struct graft_commits;
/* graft_safetensors_save, its file written through graft_atomic_open_over with spare
 * (io/atomic_file.h): the old spare's pages overwritten, the replaced file kept as the
 * new spare.  NULL spare: graft_safetensors_save.  With commits, the commit is handed to
 * it instead of made here: the bytes are written when this returns, the file appears
 * when commits has run. */
graft_status graft_safetensors_save_over(const char *path, const graft_tensor_map *m, const char *spare,
                                         struct graft_commits *commits);

#endif
