/* torch_fixture.h: the reference files a unit test gets from a script of tests/torch (PyTorch
 * exports and autograd values written into a fresh temporary folder), shared by the ONNX tests. */
#ifndef TPV_TEST_TORCH_FIXTURE_H
#define TPV_TEST_TORCH_FIXTURE_H

#include <stddef.h>

/* Makes a folder /tmp/tpv-<tag>-XXXXXX in dir[cap] and runs /usr/bin/python3
 * $TPV_SOURCE_ROOT/tests/torch/<script> <folder>.  0, or -1 when any of that fails (the test
 * step installs python3-torch and python3-onnx: a missing reference is a failure, never a skip). */
int torch_fixture_make(char *dir, size_t cap, const char *tag, const char *script);

/* Removes the folder and what the script wrote into it; 0 or -1. */
int torch_fixture_remove(const char *dir);

/* The whole file, NUL-terminated, malloc'd (*len bytes before the NUL); fails the test when it
 * cannot be read. */
void *torch_fixture_slurp(const char *path, size_t *len);

#endif
