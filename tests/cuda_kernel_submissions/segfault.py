import ctypes


def custom_kernel(data):
    print("about to dereference NULL")
    return ctypes.string_at(0)
