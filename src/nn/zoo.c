/* zoo.c — the model zoo: architecture names and torchvision 0.14's pretrained weights
 * (file names and URLs as in torchvision.models.*_Weights; the hex in a file name is
 * the start of the file's SHA-256), the weights cache and verified downloads. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "io/fs.h"
#include "io/download.h"

#define DEFAULT_URL_BASE "https://download.pytorch.org/models/"
#define IMAGENET_SIZE 224 /* torchvision's ImageClassification transforms crop to 224 */

static const char *const ZOO_NAMES[] = {"vgg11",    "vgg13",    "vgg16",     "vgg19",     "vgg11_bn",
                                        "vgg13_bn", "vgg16_bn", "vgg19_bn",  "resnet18",  "resnet34",
                                        "resnet50", "resnet101", "resnet152", NULL};

static const graft_pretrained PRETRAINED[] = {
    {"vgg11", "IMAGENET1K_V1", "vgg11-8a719046.pth", "8a719046", IMAGENET_SIZE, 1, 256},
    {"vgg13", "IMAGENET1K_V1", "vgg13-19584684.pth", "19584684", IMAGENET_SIZE, 1, 256},
    {"vgg16", "IMAGENET1K_V1", "vgg16-397923af.pth", "397923af", IMAGENET_SIZE, 1, 256},
    {"vgg19", "IMAGENET1K_V1", "vgg19-dcbb9e9d.pth", "dcbb9e9d", IMAGENET_SIZE, 1, 256},
    {"vgg11_bn", "IMAGENET1K_V1", "vgg11_bn-6002323d.pth", "6002323d", IMAGENET_SIZE, 1, 256},
    {"vgg13_bn", "IMAGENET1K_V1", "vgg13_bn-abd245e5.pth", "abd245e5", IMAGENET_SIZE, 1, 256},
    {"vgg16_bn", "IMAGENET1K_V1", "vgg16_bn-6c64b313.pth", "6c64b313", IMAGENET_SIZE, 1, 256},
    {"vgg19_bn", "IMAGENET1K_V1", "vgg19_bn-c79401a0.pth", "c79401a0", IMAGENET_SIZE, 1, 256},
    /* ResNet*_Weights: torchvision 0.14's DEFAULT is IMAGENET1K_V2 where a V2 exists (its
     * evaluation transform resizes to 232 before the 224 crop; V1's to 256); pretrained=True
     * still means V1 there, graft's --pretrained follows DEFAULT. */
    {"resnet18", "IMAGENET1K_V1", "resnet18-f37072fd.pth", "f37072fd", IMAGENET_SIZE, 1, 256},
    {"resnet34", "IMAGENET1K_V1", "resnet34-b627a593.pth", "b627a593", IMAGENET_SIZE, 1, 256},
    {"resnet50", "IMAGENET1K_V1", "resnet50-0676ba61.pth", "0676ba61", IMAGENET_SIZE, 0, 256},
    {"resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", "11ad3fa6", IMAGENET_SIZE, 1, 232},
    {"resnet101", "IMAGENET1K_V1", "resnet101-63fe2227.pth", "63fe2227", IMAGENET_SIZE, 0, 256},
    {"resnet101", "IMAGENET1K_V2", "resnet101-cd907fc2.pth", "cd907fc2", IMAGENET_SIZE, 1, 232},
    {"resnet152", "IMAGENET1K_V1", "resnet152-394f9c45.pth", "394f9c45", IMAGENET_SIZE, 0, 256},
    {"resnet152", "IMAGENET1K_V2", "resnet152-f82ba261.pth", "f82ba261", IMAGENET_SIZE, 1, 232},
};

#define NPRETRAINED (sizeof PRETRAINED / sizeof PRETRAINED[0])

const char *const *graft_zoo_names(void) { return ZOO_NAMES; }
size_t graft_pretrained_count(void) { return NPRETRAINED; }
const graft_pretrained *graft_pretrained_at(size_t i) { return i < NPRETRAINED ? &PRETRAINED[i] : NULL; }

/* "v1" and "IMAGENET1K_V1" name the same weights. */
static int version_matches(const char *have, const char *want) {
    if (!strcasecmp(have, want)) return 1;
    const char *tail = strrchr(have, '_');
    return tail && !strcasecmp(tail + 1, want);
}

const graft_pretrained *graft_pretrained_find(const char *arch, const char *version) {
    int known_arch = 0;
    for (size_t i = 0; i < NPRETRAINED; i++) {
        if (strcmp(PRETRAINED[i].arch, arch)) continue;
        known_arch = 1;
        if (version && *version ? version_matches(PRETRAINED[i].version, version) : PRETRAINED[i].is_default)
            return &PRETRAINED[i];
    }
    if (known_arch)
        graft_error(GRAFT_ERR_NOTFOUND, "%s has no pretrained weights version '%s'", arch, version);
    else
        graft_error(GRAFT_ERR_NOTFOUND, "no pretrained weights for '%s' (see graft models)", arch);
    return NULL;
}

graft_status graft_pretrained_url(const graft_pretrained *p, char *buf, size_t size) {
    const char *base = getenv("GRAFT_MODEL_URL_BASE");
    if (!base || !*base) base = DEFAULT_URL_BASE;
    size_t n = strlen(base);
    int w = snprintf(buf, size, "%s%s%s", base, n && base[n - 1] == '/' ? "" : "/", p->file);
    if (w < 0 || (size_t)w >= size) return graft_error(GRAFT_ERR_INVALID, "URL of %s is too long", p->file);
    return GRAFT_OK;
}

graft_status graft_cache_dir(char *buf, size_t size) {
    const char *env;
    int w;
    if ((env = getenv("GRAFT_HOME")) && *env)
        w = snprintf(buf, size, "%s", env);
    else if ((env = getenv("TORCH_HOME")) && *env)
        w = snprintf(buf, size, "%s/hub/checkpoints", env);
    else if ((env = getenv("XDG_CACHE_HOME")) && *env)
        w = snprintf(buf, size, "%s/torch/hub/checkpoints", env);
    else if ((env = getenv("HOME")) && *env)
        w = snprintf(buf, size, "%s/.cache/torch/hub/checkpoints", env);
    else
        return graft_error(GRAFT_ERR_NOTFOUND, "no cache folder: set GRAFT_HOME (or TORCH_HOME, or HOME)");
    if (w < 0 || (size_t)w >= size) return graft_error(GRAFT_ERR_INVALID, "cache folder path is too long");
    return GRAFT_OK;
}

static int offline_from_env(void) {
    const char *v = getenv("GRAFT_OFFLINE");
    return v && *v && strcmp(v, "0") != 0;
}

graft_status graft_pretrained_fetch(const graft_pretrained *p, const graft_fetch_options *o, char *path, size_t size) {
    char dir[4096], url[4096];
    graft_status s = graft_cache_dir(dir, sizeof dir);
    if (s) return s;
    int w = snprintf(path, size, "%s/%s", dir, p->file);
    if (w < 0 || (size_t)w >= size) return graft_error(GRAFT_ERR_INVALID, "cache path of %s is too long", p->file);
    if (access(path, R_OK) == 0) return GRAFT_OK;
    if ((s = graft_pretrained_url(p, url, sizeof url))) return s;
    if ((o && o->offline) || offline_from_env())
        return graft_error(GRAFT_ERR_NOTFOUND, "%s: offline and not cached: download %s and put it in %s/", p->arch,
                           url, dir);
    if ((s = graft_make_dirs(dir))) return s;
    graft_download_options d = {.expected = p->sha256_prefix, .hash = GRAFT_HASH_SHA256,
                                .progress = o ? o->progress : NULL, .user = o ? o->user : NULL};
    return graft_download(url, path, &d);
}
