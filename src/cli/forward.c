/* forward.c — `graft forward --model ARCH --weights W --input IN --output OUT`
 * Runs one forward pass on the tensor "input" of a safetensors file and writes the
 * tensor "output" to another (atomically: no partial file on failure). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static void help(void) {
    puts("usage: graft forward --model ARCH [--num-classes N] (--weights FILE | --pretrained)\n"
         "                     --input IN.safetensors --output OUT.safetensors [--train-mode] [--seed S]\n\n"
         "Loads the weights (torchvision state-dict names, strict), runs the model on the\n"
         "float32 tensor 'input' [N, C, H, W] of IN and writes the tensor 'output' to OUT.\n\n"
         "  --weights FILE        safetensors or PyTorch checkpoint (.pth, .pt, .pth.tar; by content)\n"
         "  --pretrained          torchvision's ImageNet weights from the cache, downloaded if missing\n"
         "  --weights-version V   which pretrained weights (default: torchvision's DEFAULT)\n"
         "  --offline             never download (also GRAFT_OFFLINE=1)\n"
         "  --num-classes N       a fresh N-way head; the checkpoint's head is not loaded if it differs\n"
         "  --train-mode          run in train mode (batch statistics in BatchNorm, dropout on)\n"
         "  --seed S              seed for dropout in train mode (default 0)");
}

int cmd_forward(int argc, char **argv) {
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"num-classes", required_argument, 0, 'n'},
                                         {"weights", required_argument, 0, 'w'},
                                         {"input", required_argument, 0, 'i'},
                                         {"output", required_argument, 0, 'o'},
                                         {"train-mode", no_argument, 0, 't'},
                                         {"seed", required_argument, 0, 's'},
                                         {"pretrained", no_argument, 0, 'p'},
                                         {"weights-version", required_argument, 0, 'v'},
                                         {"offline", no_argument, 0, 'O'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *arch = NULL, *weights = NULL, *input = NULL, *output = NULL;
    graft_model_options mo = graft_model_defaults();
    mo.init = 0; /* every value comes from the weights file */
    int train = 0, pretrained = 0, c;
    const char *version = NULL;
    graft_fetch_options fo = {0};
    int64_t seed = 0;
    opterr = 0; /* unknown options are reported by cli_bad_option */
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': arch = optarg; break;
        case 'w': weights = optarg; break;
        case 'i': input = optarg; break;
        case 'o': output = optarg; break;
        case 't': train = 1; break;
        case 'p': pretrained = 1; break;
        case 'v': version = optarg; break;
        case 'O': fo.offline = 1; break;
        case 'n':
            if (cli_parse_i64(optarg, 1, 1 << 24, &mo.num_classes))
                return cli_usage("forward", "--num-classes: '%s' is not a positive integer", optarg);
            break;
        case 's':
            if (cli_parse_i64(optarg, 0, INT64_MAX, &seed))
                return cli_usage("forward", "--seed: '%s' is not a non-negative integer", optarg);
            break;
        case 'h': help(); return 0;
        default: return cli_bad_option("forward", argv, optind);
        }
    }
    if (optind != argc) return cli_usage("forward", "unexpected argument '%s'", argv[optind]);
    if (!arch) return cli_usage("forward", "--model is required");
    if (!weights && !pretrained) return cli_usage("forward", "--weights or --pretrained is required");
    if (weights && pretrained) return cli_usage("forward", "--weights and --pretrained exclude each other");
    if (!input) return cli_usage("forward", "--input is required");
    if (!output) return cli_usage("forward", "--output is required");

    int rc = CLI_EXIT_FAILURE;
    graft_model *m = NULL;
    graft_tensor_map *in = NULL, *out = NULL;
    if (graft_model_create(arch, &mo, &m)) {
        rc = cli_fail_status("--model");
        goto done;
    }
    char cached[8192];
    if (pretrained) {
        const graft_pretrained *p = graft_pretrained_find(arch, version);
        cli_progress bar;
        cli_progress_init(&bar, p ? p->file : "");
        fo.progress = cli_progress_update;
        fo.user = &bar;
        graft_status fs = p ? graft_pretrained_fetch(p, &fo, cached, sizeof cached) : GRAFT_ERR_NOTFOUND;
        cli_progress_end(&bar);
        if (fs) {
            rc = cli_fail("--pretrained: %s", graft_errmsg());
            goto done;
        }
        weights = cached;
    }
    cli_log_to_stderr();
    if (graft_model_load_file(m, weights, mo.num_classes ? GRAFT_LOAD_NEW_HEAD : GRAFT_LOAD_STRICT)) {
        rc = cli_fail("%s: %s", pretrained ? "--pretrained" : "--weights", graft_errmsg());
        goto done;
    }
    if (graft_safetensors_load(input, &in)) {
        rc = cli_fail_status("--input");
        goto done;
    }
    graft_tensor *x = graft_tensor_map_get(in, "input");
    if (!x) {
        rc = cli_fail("--input: %s: no tensor named 'input'", input);
        goto done;
    }
    graft_model_set_training(m, train);
    graft_model_set_seed(m, (uint64_t)seed);
    const graft_tensor *y;
    if (graft_model_forward(m, x, &y)) {
        rc = cli_fail("%s: %s", input, graft_errmsg());
        goto done;
    }
    if (graft_tensor_map_create(&out) || graft_tensor_map_put_copy(out, "output", y) ||
        graft_tensor_map_set_meta(out, "arch", graft_model_arch(m)) ||
        graft_safetensors_save(output, out)) {
        rc = cli_fail_status("--output");
        goto done;
    }
    rc = 0;
done:
    graft_tensor_map_free(out);
    graft_tensor_map_free(in);
    graft_model_free(m);
    return rc;
}
