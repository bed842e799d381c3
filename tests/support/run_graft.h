/* run_graft.h — running the graft binary ($GRAFT_BIN) from a cmocka test (header-only;
 * include after cmocka.h and fixtures.h). */
#ifndef GRAFT_TEST_RUN_GRAFT_H
#define GRAFT_TEST_RUN_GRAFT_H

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static inline const char *graft_bin(void) {
    const char *b = getenv("GRAFT_BIN");
    if (!b || !*b) fail_msg("GRAFT_BIN is not set (the path of the graft binary)");
    return b;
}

static inline long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* Runs GRAFT_BIN with argv[1..] (argv[0] is filled in), stdout and stderr to files next
 * to `out`; returns the exit status, fails on a signal.  Reports what it printed. */
static inline int run_graft(const char **args, int nargs, const char *out_path, long *out_bytes, long *err_bytes) {
    char so[1100], se[1100];
    snprintf(so, sizeof so, "%s.stdout", out_path);
    snprintf(se, sizeof se, "%s.stderr", out_path);
    const char *argv[64];
    assert_true(nargs + 2 <= 64);
    argv[0] = graft_bin();
    for (int i = 0; i < nargs; i++) argv[i + 1] = args[i];
    argv[nargs + 1] = NULL;

    posix_spawn_file_actions_t fa;
    assert_int_equal(posix_spawn_file_actions_init(&fa), 0);
    assert_int_equal(posix_spawn_file_actions_addopen(&fa, 1, so, O_WRONLY | O_CREAT | O_TRUNC, 0644), 0);
    assert_int_equal(posix_spawn_file_actions_addopen(&fa, 2, se, O_WRONLY | O_CREAT | O_TRUNC, 0644), 0);
    pid_t pid;
    int e = posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e) fail_msg("cannot start %s: %s", argv[0], strerror(e));
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) fail_msg("waitpid: %s", strerror(errno));

    *out_bytes = file_size(so);
    *err_bytes = file_size(se);
    char *err_text = fx_read_text(se);
    if (*err_bytes > 0) print_message("graft stderr: %s", err_text ? err_text : "?");
    free(err_text);
    unlink(so);
    unlink(se);
    if (!WIFEXITED(status)) fail_msg("graft died from signal %d", WIFSIGNALED(status) ? WTERMSIG(status) : -1);
    return WEXITSTATUS(status);
}

#endif
