/* statefile.c - core.write_atomic(path, data): the state store's durable write.
 *
 * The data goes to `path.tmp`, which is fsync'ed and renamed over `path`; the directory is
 * then fsync'ed, so after a crash the file holds either the old or the new contents,
 * never a mix. Returns true | nil, err (code "io_error"). */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "twl.h"

static int fail(lua_State *L, const char *what, const char *path) {
  int e = errno;
  luaL_pushfail(L);
  twl_push_errorf(L, "io_error", 0, "%s %s: %s", what, path, strerror(e));
  return 2;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int st_write_atomic(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, path);
  luaL_addstring(&b, ".tmp");
  luaL_pushresult(&b);
  const char *tmp = lua_tostring(L, -1);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail(L, "cannot create", tmp);
  if (write_all(fd, data, len) != 0 || fsync(fd) != 0) {
    int e = errno;
    close(fd);
    unlink(tmp);
    errno = e;
    return fail(L, "cannot write", tmp);
  }
  if (close(fd) != 0) {
    unlink(tmp);
    return fail(L, "cannot write", tmp);
  }
  if (rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    errno = e;
    return fail(L, "cannot rename to", path);
  }
  char *copy = strdup(path);
  if (copy) {
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd); /* the rename itself is durable */
      close(dfd);
    }
    free(copy);
  }
  lua_pushboolean(L, 1);
  return 1;
}

void twl_statefile_open(lua_State *L, int mod) {
  lua_pushcfunction(L, st_write_atomic);
  lua_setfield(L, mod, "write_atomic");
}
