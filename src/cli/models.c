/* models.c — `graft models`: the zoo with parameter counts, input sizes, weight files,
 * URLs and whether each file is already in the cache. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

int cmd_models(int argc, char **argv) {
    if (argc > 1) {
        if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
            puts("usage: graft models\n\nLists every zoo architecture: parameters, default input size, the\n"
                 "pretrained weights file, whether it is in the cache folder, and its URL.");
            return 0;
        }
        return cli_usage("models", "unexpected argument '%s'", argv[1]);
    }
    char cache[4096];
    int have_cache = graft_cache_dir(cache, sizeof cache) == GRAFT_OK;
    printf("%-10s %13s %6s  %-24s %-6s %s\n", "model", "params", "input", "weights", "cached", "url");
    const char *const *names = graft_zoo_names();
    for (int i = 0; names[i]; i++) {
        graft_model_options o = graft_model_defaults();
        o.init = 0;
        graft_model *m;
        if (graft_model_create(names[i], &o, &m)) return cli_fail_status(names[i]);
        int64_t total;
        graft_model_param_counts(m, &total, NULL);
        graft_model_free(m);
        char count[32], url[4096] = "-", path[8192];
        cli_format_count(total, count, sizeof count);
        const graft_pretrained *p = graft_pretrained_find(names[i], NULL);
        const char *cached = "-";
        if (p) {
            if (graft_pretrained_url(p, url, sizeof url)) return cli_fail_status(names[i]);
            snprintf(path, sizeof path, "%s/%s", cache, p->file);
            cached = have_cache && access(path, R_OK) == 0 ? "yes" : "no";
        }
        printf("%-10s %13s %6lld  %-24s %-6s %s\n", names[i], count, (long long)(p ? p->input_size : 224),
               p ? p->file : "-", cached, url);
    }
    if (have_cache) printf("\ncache: %s\n", cache);
    return 0;
}
