/* loader.c — loader throughput: CIFAR-sized uint8 images through ToTensor + Normalize
 * into shuffled batches, with the caller doing nothing but taking batches, so the
 * number is what the loader can feed a model at most.
 *
 *     bench_loader [--data SPEC] [--transform T] [--batch B] [--workers W] [--epochs E]
 *
 * Without --data the images are 50,000 random 32 × 32 × 3 ones in memory (CIFAR-10's
 * training split in size), so no download is needed.  Prints one line per epoch and
 * "images_per_s N" last (the best epoch).  Build and run: see bench/README.md. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/rng.h"
#include "data/loader.h"
#include "data/spec.h"

#define CIFAR_TRAIN_IMAGES 50000
#define CIFAR_SIDE 32
#define CIFAR_CLASSES 10
#define DEFAULT_TRANSFORM "normalize=0.4914:0.4822:0.4465/0.247:0.2435:0.2616"

static graft_source *synthetic_cifar(void) {
    graft_dataset *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->n = CIFAR_TRAIN_IMAGES;
    d->h = d->w = CIFAR_SIDE;
    d->c = 3;
    size_t bytes = (size_t)d->n * CIFAR_SIDE * CIFAR_SIDE * 3;
    d->images = malloc(bytes);
    d->labels = malloc((size_t)d->n * sizeof *d->labels);
    d->num_classes = CIFAR_CLASSES; /* names "0" .. "9" */
    if (!d->images || !d->labels) {
        graft_dataset_free(d);
        return NULL;
    }
    graft_rng r;
    graft_rng_seed(&r, 1);
    for (size_t i = 0; i < bytes; i += 8) {
        uint64_t v = graft_rng_u64(&r);
        memcpy(d->images + i, &v, bytes - i < 8 ? bytes - i : 8);
    }
    for (int64_t i = 0; i < d->n; i++) d->labels[i] = (int64_t)(graft_rng_u64(&r) % CIFAR_CLASSES);
    graft_source *s;
    if (graft_source_from_dataset(d, "synthetic CIFAR-sized images", &s)) return NULL;
    return s;
}

int main(int argc, char **argv) {
    const char *spec = NULL, *transform = DEFAULT_TRANSFORM;
    graft_loader_options o = graft_loader_defaults();
    o.shuffle = true;
    o.workers = 2;
    int epochs = 3;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--data") && v) spec = v;
        else if (!strcmp(argv[i], "--transform") && v) transform = v;
        else if (!strcmp(argv[i], "--batch") && v) o.batch_size = atoll(v);
        else if (!strcmp(argv[i], "--workers") && v) o.workers = atoi(v);
        else if (!strcmp(argv[i], "--epochs") && v) epochs = atoi(v);
        else {
            fprintf(stderr, "usage: bench_loader [--data SPEC] [--transform T] [--batch B] "
                            "[--workers W] [--epochs E]\n");
            return 2;
        }
        i++;
    }
    graft_data *data = NULL;
    graft_source *src;
    if (spec) {
        if (graft_data_open(spec, NULL, &data)) {
            fprintf(stderr, "bench_loader: %s\n", graft_errmsg());
            return 1;
        }
        src = data->train;
    } else {
        src = synthetic_cifar();
        if (!src) {
            fprintf(stderr, "bench_loader: out of memory\n");
            return 1;
        }
    }
    graft_transforms *tf;
    graft_loader *l;
    if (graft_transforms_parse(transform, &tf) || graft_loader_create(src, tf, &o, &l)) {
        fprintf(stderr, "bench_loader: %s\n", graft_errmsg());
        return 1;
    }
    int chw[3];
    graft_loader_sample_shape(l, chw);
    printf("source: %s, %lld images -> %dx%dx%d, batch %lld, workers %d, transform '%s'\n",
           graft_source_name(src), (long long)graft_source_len(src), chw[0], chw[1], chw[2],
           (long long)o.batch_size, o.workers, transform);
    double best = 0, checksum = 0;
    for (int e = 0; e < epochs; e++) {
        double t0 = graft_now_seconds();
        int64_t images = 0;
        graft_loader_start_epoch(l, e);
        const graft_tensor *x, *y;
        int done;
        while (!graft_loader_next(l, &x, &y, &done) && !done) {
            images += graft_tensor_dim(x, 0);
            checksum += graft_tensor_f32_const(x)[0]; /* touch the batch */
        }
        double rate = (double)images / (graft_now_seconds() - t0);
        printf("epoch %d: %lld images, %.0f images/s\n", e, (long long)images, rate);
        if (rate > best) best = rate;
    }
    if (checksum != checksum) printf("(nan)\n");
    graft_loader_free(l);
    graft_transforms_free(tf);
    if (data) graft_data_free(data);
    else graft_source_free(src);
    printf("images_per_s %.0f\n", best);
    return 0;
}
