/* arch.h — architectures: how a name or spec string becomes a module tree.
 *
 * Every architecture family (vgg.c, resnet.c) provides a builder that takes the
 * arch string and returns the root module with torchvision's default head, initialised
 * (or left zero) as torchvision does, plus the module path of its classification head. */
#ifndef GRAFT_NN_ARCH_H
#define GRAFT_NN_ARCH_H

#include <stdbool.h>

#include "core/rng.h"
#include "nn/module.h"

typedef struct graft_arch_info {
    const char *head_path;      /* "classifier.6" (static string) */
    /* The root's forward as a sequence of steps, each a module run one after the other
     * (VGG: features, avgpool, flatten, classifier; flatten is not a registered child).
     * Owned by the root; the feature cache runs a prefix of them once and the rest per
     * batch. */
    graft_module *const *steps;
    int nsteps;
} graft_arch_info;

/* Returns GRAFT_ERR_NOTFOUND (without touching *root) when arch is not a VGG name/spec. */
graft_status graft_vgg_build(const char *arch, bool init, graft_rng *rng, graft_module **root,
                             graft_arch_info *info);
/* The same for torchvision's ResNets (resnet18 ... resnet152, resnet:... specs; head "fc"). */
graft_status graft_resnet_build(const char *arch, bool init, graft_rng *rng, graft_module **root,
                                graft_arch_info *info);

#endif
