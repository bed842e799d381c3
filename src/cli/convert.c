/* convert.c — `graft convert IN OUT.safetensors [--dtype f32|f16|bf16]`: any weights
 * file graft reads (safetensors, .pth in either layout) written as safetensors with
 * the same names — a PyTorch checkpoint made loadable without pickle. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cli/cli.h"

static void help(void) {
    puts("usage: graft convert IN OUT.safetensors [--dtype f32|f16|bf16]\n\n"
         "Reads IN by content (safetensors, or a torch.save checkpoint: zip or legacy\n"
         "layout, state dict at the top or under \"state_dict\"/\"model\", DataParallel's\n"
         "\"module.\" prefix removed) and writes its tensors to OUT as safetensors, keeping\n"
         "names and order.  Float tensors are stored as --dtype (default f32).");
}

int cmd_convert(int argc, char **argv) {
    static const struct option opts[] = {{"dtype", required_argument, 0, 'd'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *dtype = "F32";
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            if (!strcasecmp(optarg, "f32")) dtype = "F32";
            else if (!strcasecmp(optarg, "f16")) dtype = "F16";
            else if (!strcasecmp(optarg, "bf16")) dtype = "BF16";
            else return cli_usage("convert", "--dtype: '%s' is not f32, f16 or bf16", optarg);
            break;
        case 'h': help(); return 0;
        default: return cli_bad_option("convert", argv, optind);
        }
    }
    if (optind != argc - 2) return cli_usage("convert", "expected an input and an output file");
    graft_tensor_map *m;
    if (graft_weights_load(argv[optind], &m)) return cli_fail("%s", graft_errmsg());
    graft_status s = graft_safetensors_save_dtype(argv[optind + 1], m, dtype);
    graft_tensor_map_free(m);
    if (s) return cli_fail("%s", graft_errmsg());
    return 0;
}
