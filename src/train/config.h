/* config.h — graft_train_config defaults and its JSON form, which a run folder keeps
 * (in last.state.safetensors) so that --resume needs nothing but the folder. */
#ifndef GRAFT_TRAIN_CONFIG_H
#define GRAFT_TRAIN_CONFIG_H

#include <jansson.h>

#include "graft/graft.h"

/* The config as a JSON object (new reference).  NULL on allocation failure. */
json_t *graft_train_config_to_json(const graft_train_config *c);
/* Fills c from a JSON object written by graft_train_config_to_json.  Strings (and the
 * freeze array, allocated into *freeze_storage, which the caller frees) point into j,
 * which must outlive c. */
graft_status graft_train_config_from_json(json_t *j, graft_train_config *c, const char ***freeze_storage);

#endif
