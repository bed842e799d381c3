/* checkpoint.h — self-describing model checkpoints.
 *
 * A checkpoint is a safetensors file whose tensors are the model's state dict with
 * torchvision's names and shapes (so PyTorch can load it: safetensors.torch.load_file
 * then model.load_state_dict) and whose metadata says everything needed to use it:
 *
 *   format         "graft-checkpoint"        format_version  "1"
 *   graft_version  GRAFT_VERSION             arch            zoo name or VGG spec
 *   num_classes    "10"                      classes         JSON array of names
 *   transform      the evaluation transform spec (e.g. "normalize=imagenet")
 *   input_shape    "3,32,32": what the model sees after the transform
 *   frozen         JSON array of frozen module prefixes
 *   epoch          epochs completed when it was written
 * so graft eval and graft predict need nothing but the file. */
#ifndef GRAFT_TRAIN_CHECKPOINT_H
#define GRAFT_TRAIN_CHECKPOINT_H

#include <stdint.h>

#include "graft/graft.h"

typedef struct graft_checkpoint_meta {
    char *arch;
    int64_t num_classes;
    char **classes;      /* num_classes names */
    char *transform;     /* evaluation transform spec */
    int input_shape[3];  /* C, H, W */
    char **frozen;
    int nfrozen;
    int64_t epoch;
    char *graft_version; /* as read; ignored when writing (GRAFT_VERSION is written) */
    int64_t save_id;     /* > 0: written as "save_id", pairing the file with a training state */
} graft_checkpoint_meta;

/* Writes m and meta to path atomically (temporary file, fsync, rename). */
graft_status graft_checkpoint_save(const char *path, const graft_model *m, const graft_checkpoint_meta *meta);
/* The same through graft_safetensors_save_over (io/writers.h): a file rewritten every
 * epoch overwrites the spare's pages and leaves the file it replaces as the new spare;
 * with commits, its commit is handed to them (io/atomic_file.h) instead of made here. */
struct graft_commits;
graft_status graft_checkpoint_save_over(const char *path, const graft_model *m, const graft_checkpoint_meta *meta,
                                        const char *spare, struct graft_commits *commits);
/* Reads a checkpoint: creates the model its metadata names, loads the weights
 * strictly and freezes the recorded prefixes.  *m is freed with graft_model_free and
 * meta with graft_checkpoint_meta_release. */
graft_status graft_checkpoint_load(const char *path, graft_model **m, graft_checkpoint_meta *meta);
/* Copies of strings/arrays into meta (deep); release frees them. */
graft_status graft_checkpoint_meta_copy(graft_checkpoint_meta *dst, const graft_checkpoint_meta *src);
void graft_checkpoint_meta_release(graft_checkpoint_meta *meta);

#endif
