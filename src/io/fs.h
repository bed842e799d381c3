/* fs.h — small file-system helpers shared by the parts of graft that write folders. */
#ifndef GRAFT_IO_FS_H
#define GRAFT_IO_FS_H

#include "graft/graft.h"

/* mkdir -p: creates dir and its missing parents; an existing folder is fine, an
 * existing file of that name is GRAFT_ERR_IO naming it. */
graft_status graft_make_dirs(const char *dir);

#endif
