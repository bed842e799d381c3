/* fetch.c — `graft fetch MODEL [--weights-version V] [--offline]`: puts a model's
 * pretrained weights into the cache (downloaded, SHA-256 checked, renamed into place)
 * and prints the file's path.  `graft fetch cifar10|cifar100 [--root DIR]` does the
 * same for a dataset (MD5 checked, extracted safely) and prints its folder. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "data/fetch_cifar.h"

static void help(void) {
    puts("usage: graft fetch MODEL [--weights-version V] [--offline]\n"
         "       graft fetch cifar10|cifar100 [--root DIR] [--offline]\n\n"
         "Downloads MODEL's pretrained weights from torchvision's URL into the cache\n"
         "(see graft models), checks the SHA-256 prefix in the file name, and prints the\n"
         "path.  A file already in the cache is used as it is.\n\n"
         "cifar10 and cifar100 download the binary version from www.cs.toronto.edu, check\n"
         "its MD5, unpack it into DIR and print the dataset folder.  Nothing is downloaded\n"
         "when DIR already holds the dataset, also as torchvision's python version.\n\n"
         "  --weights-version V  IMAGENET1K_V1 (or v1, ...); default: torchvision's DEFAULT\n"
         "  --root DIR           datasets: where to put them (default $GRAFT_DATA, else\n"
         "                       ~/.cache/graft/datasets; --data cifar10 looks there too)\n"
         "  --offline            never use the network (also GRAFT_OFFLINE=1)\n\n"
         "Environment: GRAFT_HOME, TORCH_HOME, XDG_CACHE_HOME choose the cache folder;\n"
         "GRAFT_MODEL_URL_BASE replaces https://download.pytorch.org/models/ and\n"
         "GRAFT_DATA_URL_BASE https://www.cs.toronto.edu/~kriz/.");
}

static int fetch_dataset(const char *name, const char *root, graft_fetch_options *fo) {
    const graft_cifar_archive *a = graft_cifar_archive_find(name);
    if (!a) return cli_fail("%s", graft_errmsg());
    cli_progress bar;
    cli_progress_init(&bar, a->file);
    fo->progress = cli_progress_update;
    fo->user = &bar;
    char dir[8192];
    graft_status s = graft_cifar_fetch(a, root, fo, dir, sizeof dir);
    cli_progress_end(&bar);
    if (s) return cli_fail("%s", graft_errmsg());
    puts(dir);
    return 0;
}

int cmd_fetch(int argc, char **argv) {
    static const struct option opts[] = {{"weights-version", required_argument, 0, 'v'},
                                         {"offline", no_argument, 0, 'o'},
                                         {"root", required_argument, 0, 'r'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *version = NULL, *root = NULL;
    graft_fetch_options fo = {0};
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'v': version = optarg; break;
        case 'o': fo.offline = 1; break;
        case 'r': root = optarg; break;
        case 'h': help(); return 0;
        default: return cli_bad_option("fetch", argv, optind);
        }
    }
    if (optind != argc - 1) return cli_usage("fetch", "expected one model name");
    const char *name = argv[optind];
    if (!strcmp(name, "cifar10") || !strcmp(name, "cifar100")) {
        if (version) return cli_usage("fetch", "--weights-version is for models, not datasets");
        return fetch_dataset(name, root, &fo);
    }
    if (root) return cli_usage("fetch", "--root is for datasets (cifar10, cifar100)");
    const graft_pretrained *p = graft_pretrained_find(name, version);
    if (!p) return cli_fail("%s", graft_errmsg());
    cli_progress bar;
    cli_progress_init(&bar, p->file);
    fo.progress = cli_progress_update;
    fo.user = &bar;
    char path[8192];
    graft_status s = graft_pretrained_fetch(p, &fo, path, sizeof path);
    cli_progress_end(&bar);
    if (s) return cli_fail("%s", graft_errmsg());
    puts(path);
    return 0;
}
