/* forward.c — `graft forward --model ARCH --weights W --input IN --output OUT`
 * Runs one forward pass on the tensor "input" of a safetensors file and writes the
 * tensor "output" to another (atomically: no partial file on failure). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static void help(void) {
    puts("usage: graft forward --model ARCH [--num-classes N] --weights W.safetensors\n"
         "                     --input IN.safetensors --output OUT.safetensors [--train-mode] [--seed S]\n\n"
         "Loads W (torchvision state-dict names, strict), runs the model on the float32\n"
         "tensor 'input' [N, C, H, W] of IN and writes the tensor 'output' to OUT.\n\n"
         "  --train-mode   run in train mode (batch statistics in BatchNorm, dropout on)\n"
         "  --seed S       seed for dropout in train mode (default 0)");
}

int cmd_forward(int argc, char **argv) {
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"num-classes", required_argument, 0, 'n'},
                                         {"weights", required_argument, 0, 'w'},
                                         {"input", required_argument, 0, 'i'},
                                         {"output", required_argument, 0, 'o'},
                                         {"train-mode", no_argument, 0, 't'},
                                         {"seed", required_argument, 0, 's'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *arch = NULL, *weights = NULL, *input = NULL, *output = NULL;
    graft_model_options mo = graft_model_defaults();
    mo.init = 0; /* every value comes from the weights file */
    int train = 0, c;
    int64_t seed = 0;
    opterr = 0; /* unknown options are reported by cli_bad_option */
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': arch = optarg; break;
        case 'w': weights = optarg; break;
        case 'i': input = optarg; break;
        case 'o': output = optarg; break;
        case 't': train = 1; break;
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
    if (!weights) return cli_usage("forward", "--weights is required");
    if (!input) return cli_usage("forward", "--input is required");
    if (!output) return cli_usage("forward", "--output is required");

    int rc = CLI_EXIT_FAILURE;
    graft_model *m = NULL;
    graft_tensor_map *in = NULL, *out = NULL;
    if (graft_model_create(arch, &mo, &m)) {
        rc = cli_fail_status("--model");
        goto done;
    }
    if (graft_model_load_safetensors(m, weights)) {
        rc = cli_fail_status("--weights");
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
