/* classify.c — embedding a trained graft model in an application.
 *
 *     classify CHECKPOINT IMAGE [K]
 *
 * Loads a checkpoint written by `graft train`, decodes nothing itself: it reads a
 * binary PPM (P6), the simplest RGB container, to show the buffer interface; then
 * prints the K most probable classes.  graft_classifier_classify_file does the same
 * for PNG, JPEG and BMP files. */
#include <graft/graft.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a P6 PPM with maxval 255 into a malloc'd RGB buffer. */
static unsigned char *read_ppm(const char *path, int *w, int *h) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    int maxval = 0;
    unsigned char *rgb = NULL;
    if (fscanf(f, "P6 %d %d %d", w, h, &maxval) == 3 && maxval == 255 && *w > 0 && *h > 0 && *w < 65536 &&
        *h < 65536 && fgetc(f) != EOF) {
        size_t n = (size_t)*w * (size_t)*h * 3;
        rgb = malloc(n);
        if (rgb && fread(rgb, 1, n, f) != n) {
            free(rgb);
            rgb = NULL;
        }
    }
    fclose(f);
    return rgb;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s CHECKPOINT IMAGE.ppm [K]\n", argv[0]);
        return 2;
    }
    int k = argc > 3 ? atoi(argv[3]) : 3;
    graft_classifier *c;
    if (graft_classifier_open(argv[1], &c) != GRAFT_OK) {
        fprintf(stderr, "%s\n", graft_errmsg());
        return 1;
    }
    if (k < 1 || k > graft_classifier_num_classes(c)) k = (int)graft_classifier_num_classes(c);
    int w, h;
    unsigned char *rgb = read_ppm(argv[2], &w, &h);
    if (!rgb) {
        fprintf(stderr, "%s: not a binary PPM (P6, maxval 255)\n", argv[2]);
        graft_classifier_free(c);
        return 1;
    }
    graft_prediction top[16];
    if (k > 16) k = 16;
    int rc = 0;
    if (graft_classifier_classify(c, rgb, w, h, 0, k, top) != GRAFT_OK) {
        fprintf(stderr, "%s\n", graft_errmsg());
        rc = 1;
    } else {
        for (int i = 0; i < k; i++) printf("%.4f %s\n", top[i].probability, top[i].class_name);
    }
    free(rgb);
    graft_classifier_free(c);
    return rc;
}
