/* cli.h — shared pieces of the graft command line: error reporting and number parsing.
 * Only the CLI prints and exits; the library returns statuses. */
#ifndef GRAFT_CLI_H
#define GRAFT_CLI_H

#include <stdint.h>

#include "graft/graft.h"

#define CLI_EXIT_USAGE 2
#define CLI_EXIT_FAILURE 1

/* Prints "graft: <message>" on stderr and returns CLI_EXIT_FAILURE. */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "graft: <what>: <graft_errmsg()>" and returns CLI_EXIT_FAILURE. */
int cli_fail_status(const char *what);
/* Prints a usage error ("graft CMD: ...") and returns CLI_EXIT_USAGE. */
int cli_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The usage error for the option getopt_long just rejected (unknown, or missing its
 * argument); returns CLI_EXIT_USAGE. */
int cli_bad_option(const char *cmd, char **argv, int optind_after);
/* Parses a whole decimal integer in [lo, hi]; 0 on success. */
int cli_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out);
/* "138,357,544" */
void cli_format_count(int64_t n, char *buf, unsigned size);

/* Sends the library's informational lines to stderr as "graft: ...". */
void cli_log_to_stderr(void);
/* A progress bar on stderr when it is a terminal (nothing otherwise). */
typedef struct cli_progress {
    const char *label;
    double start, last_draw;
    int drawn, tty;
} cli_progress;
void cli_progress_init(cli_progress *p, const char *label);
void cli_progress_update(void *user, uint64_t done, uint64_t total); /* a graft_progress_fn */
void cli_progress_end(cli_progress *p);

int cmd_show(int argc, char **argv);
int cmd_models(int argc, char **argv);
int cmd_fetch(int argc, char **argv);
int cmd_forward(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_predict(int argc, char **argv);
int cmd_data(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_bench(int argc, char **argv);

#endif
