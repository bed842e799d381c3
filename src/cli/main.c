/* main.c — the graft command: dispatches to one function per subcommand. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} COMMANDS[] = {
    {"show", cmd_show, "print a model as PyTorch does, with parameter counts"},
    {"train", cmd_train, "train a model: the transfer-learning recipe"},
    {"eval", cmd_eval, "evaluate a checkpoint on a dataset"},
    {"predict", cmd_predict, "classify images with a checkpoint"},
    {"forward", cmd_forward, "run a model on a tensor from a safetensors file"},
    {"convert", cmd_convert, "write a .pth or safetensors file as safetensors"},
    {"models", cmd_models, "list the model zoo and its pretrained weights"},
    {"fetch", cmd_fetch, "download pretrained weights or a dataset, verified"},
    {"data", cmd_data, "show a dataset's splits, classes and input shape; dump samples"},
    {"demo", cmd_demo, "learn a new task from a few labelled images: scratch, transfer, fine-tune"},
    {"bench", cmd_bench, "time forward, training steps or the whole recipe on random data"},
};

int cli_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("graft: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CLI_EXIT_FAILURE;
}

static void log_line(int level, const char *message, void *user) {
    (void)user;
    fprintf(stderr, "graft: %s%s\n", level ? "warning: " : "", message);
}

void cli_log_to_stderr(void) { graft_set_log_callback(log_line, NULL); }

int cli_fail_status(const char *what) { return cli_fail("%s: %s", what, graft_errmsg()); }

int cli_usage(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "graft %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see 'graft %s --help')\n", cmd);
    va_end(ap);
    return CLI_EXIT_USAGE;
}

int cli_bad_option(const char *cmd, char **argv, int optind_after) {
    /* getopt_long has moved past the offending word (an unknown option, or an option
     * whose value is missing), so it is the previous one. */
    const char *arg = optind_after > 0 ? argv[optind_after - 1] : "?";
    return cli_usage(cmd, "unknown option or missing value: '%s'", arg);
}

int cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

void cli_format_count(int64_t n, char *buf, unsigned size) {
    char digits[32];
    snprintf(digits, sizeof digits, "%lld", (long long)(n < 0 ? -n : n));
    size_t len = strlen(digits), o = 0;
    if (n < 0 && o + 1 < size) buf[o++] = '-';
    for (size_t i = 0; i < len && o + 2 < size; i++) {
        if (i && (len - i) % 3 == 0) buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = 0;
}

static void usage(FILE *f) {
    fprintf(f, "usage: graft COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        fprintf(f, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(f, "\n'graft COMMAND --help' describes a command.  graft %s\n", GRAFT_VERSION);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("graft %s\n", GRAFT_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) return COMMANDS[i].run(argc - 1, argv + 1);
    fprintf(stderr, "graft: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return CLI_EXIT_USAGE;
}
