/*
 * tvm-mpq-benchmark: run and time a module exported with QuantizedModule.export_library (a Relax
 * VM executable in a shared library) with TVM's C++ runtime, without Python.
 *
 * Only tvm-ffi's public C++ API is used (Module::LoadFromFile, Function::GetGlobal, a module's
 * GetFunction); TVM's runtime library (libtvm_runtime.so, which registers the Relax VM) is opened
 * with dlopen at start-up, so the build needs nothing from the tvm wheel. The VM is set up as
 * python/tvm/runtime/vm.py's VirtualMachine does: vm_load_executable(), then
 * vm_initialization(device_type, device_id, allocator_type).
 *
 * Output (one "key: value" or "key=value" item per line, for people and for tvm_mpq.native):
 *   runs_ms: <ms of every timed run, in order>
 *   count=<n> median_ms=<> min_ms=<> max_ms=<> mean_ms=<> std_ms=<>
 * Exit codes: 0 ok, 2 bad command line, 3 bad input (file, shape, dtype), 4 runtime / model error.
 */
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

namespace ffi = tvm::ffi;

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitInput = 3;
constexpr int kExitRuntime = 4;
// python/tvm/runtime/vm.py: VirtualMachine.NAIVE_ALLOCATOR / POOLED_ALLOCATOR
constexpr int kNaiveAllocator = 1;
constexpr int kPooledAllocator = 2;

/*! \brief An error with the exit code it maps to and a message for the user. */
struct UserError {
  int code;
  std::string message;
};

[[noreturn]] void Fail(int code, const std::string& message) { throw UserError{code, message}; }

const char* kUsage = R"(usage: tvm-mpq-benchmark MODEL.so [options]

Load a module written by tvm_mpq's QuantizedModule.export_library (a Relax VM executable) with
TVM's C++ runtime, run its function with warm-up and repeats, and print the latency per run and
median / min / max / mean in milliseconds.

options:
  --input SPEC         one per parameter of the function, in order. SPEC is one of
                         FILE.npy                 shape and dtype from the .npy header
                         FILE:SHAPE[:DTYPE]       raw little-endian data, e.g. x.bin:1x3x224x224:float32
                         SHAPE[:DTYPE]            random data (seeded), e.g. 1x3x224x224
                       DTYPE defaults to float32; SHAPE is dims joined by 'x' (or ',').
  --threads N          TVM runtime threads (sets TVM_NUM_THREADS; 0 = TVM's default)  [0]
  --warmup N           untimed runs first                                              [3]
  --repeat N           timed runs                                                      [10]
  --output PATH        write the output of the last run: .npy, else raw bytes; with several
                       outputs, PATH gets _0, _1, ... before its extension
  --function NAME      the function to run                                             [main]
  --allocator KIND     pooled | naive (as relax.VirtualMachine's memory_cfg)            [pooled]
  --seed N             seed of random inputs                                           [0]
  --tvm-runtime PATH   libtvm_runtime.so to use (default: found next to the installed tvm
                       package through this program's RUNPATH, or via LD_LIBRARY_PATH)
  --model PATH         the module (instead of the positional MODEL.so)
  -h, --help           this text
)";

// ------------------------------------------------------------------------------ small helpers
std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  out.push_back(cur);
  return out;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool FileExists(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return f.good();
}

int64_t ParseInt(const std::string& text, const std::string& what, int64_t min_value) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0) Fail(kExitUsage, what + ": not an integer: '" + text + "'");
  if (v < min_value) Fail(kExitUsage, what + " must be >= " + std::to_string(min_value) + ", got " + text);
  return v;
}

std::string ShapeToString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string DTypeName(DLDataType t) { return std::string(ffi::DLDataTypeToString(t)); }

/*! \brief "1x3x224x224" or "1,3,224,224"; "" or "scalar" is a 0-d tensor. */
std::optional<std::vector<int64_t>> TryParseShape(const std::string& text) {
  std::vector<int64_t> shape;
  if (text.empty() || text == "scalar") return shape;
  std::string t = text;
  std::replace(t.begin(), t.end(), ',', 'x');
  for (const std::string& d : Split(t, 'x')) {
    if (d.empty() || d.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    shape.push_back(std::stoll(d));
  }
  return shape;
}

DLDataType ParseDType(const std::string& text, const std::string& context) {
  static const char* kKnown[] = {"float16", "float32", "float64", "bfloat16", "int8",   "int16", "int32",
                                 "int64",   "uint8",   "uint16",  "uint32",   "uint64", "bool"};
  for (const char* k : kKnown) {
    if (text == k) return ffi::StringToDLDataType(ffi::String(text));
  }
  Fail(kExitInput, context + ": unknown dtype '" + text +
                       "' (float16, float32, float64, bfloat16, int8..int64, uint8..uint64, bool)");
}

size_t ElemBytes(DLDataType t) { return (static_cast<size_t>(t.bits) * t.lanes + 7) / 8; }

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ------------------------------------------------------------------------------ host tensors
/*! \brief 64-byte aligned CPU memory for ffi::Tensor::FromNDAlloc (TVM's kernels assume it). */
struct AlignedCPUAlloc {
  void AllocData(DLTensor* tensor) {
    size_t size = ffi::GetDataSize(*tensor);
    size_t rounded = (std::max<size_t>(size, 1) + 63) / 64 * 64;
    tensor->data = std::aligned_alloc(64, rounded);
    if (tensor->data == nullptr) throw std::bad_alloc();
    std::memset(tensor->data, 0, rounded);
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

ffi::Tensor EmptyCPU(const std::vector<int64_t>& shape, DLDataType dtype) {
  return ffi::Tensor::FromNDAlloc(AlignedCPUAlloc(), ffi::ShapeView(shape.data(), shape.size()), dtype,
                                  DLDevice{kDLCPU, 0});
}

// ------------------------------------------------------------------------------ .npy files
std::string NpyDescr(DLDataType t) {
  const bool one_byte = t.bits == 8;
  std::string order = one_byte ? "|" : "<";
  if (t.lanes != 1) return "";
  switch (t.code) {
    case kDLFloat:
      return order + "f" + std::to_string(t.bits / 8);
    case kDLInt:
      return order + "i" + std::to_string(t.bits / 8);
    case kDLUInt:
      return order + "u" + std::to_string(t.bits / 8);
    case kDLBool:
      return "|b1";
    default:
      return "";
  }
}

DLDataType DTypeFromNpyDescr(const std::string& descr, const std::string& path) {
  if (descr.size() >= 3) {
    char order = descr[0];
    char kind = descr[1];
    int bytes = std::atoi(descr.c_str() + 2);
    if (order == '>' && bytes > 1) Fail(kExitInput, path + ": big-endian .npy data is not supported");
    if (kind == 'b' && bytes == 1) return DLDataType{kDLBool, 8, 1};
    if (bytes == 1 || bytes == 2 || bytes == 4 || bytes == 8) {
      uint8_t bits = static_cast<uint8_t>(bytes * 8);
      if (kind == 'f' && bytes >= 2) return DLDataType{kDLFloat, bits, 1};
      if (kind == 'i') return DLDataType{kDLInt, bits, 1};
      if (kind == 'u') return DLDataType{kDLUInt, bits, 1};
    }
  }
  Fail(kExitInput, path + ": unsupported .npy dtype '" + descr + "'");
}

/*! \brief The value of key 'name' in a numpy header dict, e.g. "'<f4'" or "(1, 3, 32, 32)". */
std::string NpyHeaderField(const std::string& header, const std::string& name, const std::string& path) {
  size_t at = header.find("'" + name + "'");
  if (at == std::string::npos) Fail(kExitInput, path + ": .npy header has no '" + name + "'");
  at = header.find(':', at);
  if (at == std::string::npos) Fail(kExitInput, path + ": malformed .npy header");
  ++at;
  while (at < header.size() && header[at] == ' ') ++at;
  size_t end = at;
  if (header[at] == '(') {
    end = header.find(')', at);
    if (end == std::string::npos) Fail(kExitInput, path + ": malformed .npy shape");
    return header.substr(at, end - at + 1);
  }
  end = header.find_first_of(",}", at);
  return header.substr(at, end - at);
}

ffi::Tensor ReadNpy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) Fail(kExitInput, "cannot open input file '" + path + "'");
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    Fail(kExitInput, path + ": not a .npy file (bad magic)");
  }
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    f.read(reinterpret_cast<char*>(b), 2);
    header_len = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    f.read(reinterpret_cast<char*>(b), 4);
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(header_len, '\0');
  if (!f.read(header.data(), header_len)) Fail(kExitInput, path + ": truncated .npy header");
  std::string descr = NpyHeaderField(header, "descr", path);
  descr.erase(std::remove(descr.begin(), descr.end(), '\''), descr.end());
  descr.erase(std::remove(descr.begin(), descr.end(), '"'), descr.end());
  if (NpyHeaderField(header, "fortran_order", path).find("True") != std::string::npos) {
    Fail(kExitInput, path + ": Fortran-ordered .npy data is not supported (save a C-contiguous array)");
  }
  std::string shape_text = NpyHeaderField(header, "shape", path);
  std::vector<int64_t> shape;
  for (std::string d : Split(shape_text.substr(1, shape_text.size() - 2), ',')) {
    d.erase(std::remove(d.begin(), d.end(), ' '), d.end());
    if (d.empty()) continue;
    shape.push_back(std::stoll(d));
  }
  DLDataType dtype = DTypeFromNpyDescr(descr, path);
  ffi::Tensor t = EmptyCPU(shape, dtype);
  size_t nbytes = ffi::GetDataSize(*t.GetDLTensorPtr());
  if (!f.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(nbytes))) {
    Fail(kExitInput, path + ": holds less data than its header's shape " + ShapeToString(shape) + " " +
                         descr + " needs (" + std::to_string(nbytes) + " bytes)");
  }
  return t;
}

ffi::Tensor ReadRaw(const std::string& path, const std::vector<int64_t>& shape, DLDataType dtype) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) Fail(kExitInput, "cannot open input file '" + path + "'");
  const auto size = static_cast<size_t>(f.tellg());
  ffi::Tensor t = EmptyCPU(shape, dtype);
  size_t nbytes = ffi::GetDataSize(*t.GetDLTensorPtr());
  if (size != nbytes) {
    Fail(kExitInput, path + ": has " + std::to_string(size) + " bytes, but " + ShapeToString(shape) + " " +
                         DTypeName(dtype) + " needs " + std::to_string(nbytes));
  }
  f.seekg(0);
  f.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(nbytes));
  return t;
}

ffi::Tensor RandomTensor(const std::vector<int64_t>& shape, DLDataType dtype, std::mt19937_64* rng) {
  ffi::Tensor t = EmptyCPU(shape, dtype);
  int64_t n = NumElements(shape);
  void* p = t.data_ptr();
  std::uniform_real_distribution<double> real(-1.0, 1.0);
  std::uniform_int_distribution<int> small(0, 15);
  if (dtype.code == kDLFloat && dtype.bits == 32) {
    for (int64_t i = 0; i < n; ++i) static_cast<float*>(p)[i] = static_cast<float>(real(*rng));
  } else if (dtype.code == kDLFloat && dtype.bits == 64) {
    for (int64_t i = 0; i < n; ++i) static_cast<double*>(p)[i] = real(*rng);
  } else if (dtype.code == kDLInt || dtype.code == kDLUInt || dtype.code == kDLBool) {
    size_t bytes = ElemBytes(dtype);
    for (int64_t i = 0; i < n; ++i) {
      uint64_t v = static_cast<uint64_t>(dtype.code == kDLBool ? small(*rng) & 1 : small(*rng));
      std::memcpy(static_cast<char*>(p) + i * bytes, &v, bytes);  // little-endian
    }
  } else {
    Fail(kExitInput, "random data for dtype " + DTypeName(dtype) + " is not supported: give a file");
  }
  return t;
}

void WriteOutput(const std::string& path, const ffi::Tensor& t) {
  const DLTensor* dl = t.GetDLTensorPtr();
  if (dl->device.device_type != kDLCPU) Fail(kExitRuntime, "output is not on the CPU");
  if (!t.IsContiguous()) Fail(kExitRuntime, "output tensor is not contiguous");
  std::vector<int64_t> shape(dl->shape, dl->shape + dl->ndim);
  size_t nbytes = ffi::GetDataSize(*dl);
  const char* data = static_cast<const char*>(dl->data) + dl->byte_offset;
  std::ofstream f(path, std::ios::binary);
  if (!f) Fail(kExitInput, "cannot write output file '" + path + "'");
  if (EndsWith(path, ".npy")) {
    std::string descr = NpyDescr(dl->dtype);
    if (descr.empty()) Fail(kExitRuntime, "output dtype " + DTypeName(dl->dtype) + " has no .npy equivalent");
    // numpy's tuple syntax: "(1, 10)", "(10,)", "()".
    std::string pretty = "(";
    for (size_t i = 0; i < shape.size(); ++i) pretty += (i ? ", " : "") + std::to_string(shape[i]);
    pretty += shape.size() == 1 ? ",)" : ")";
    std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + pretty + ", }";
    size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header.push_back('\n');
    const uint16_t len = static_cast<uint16_t>(header.size());
    f.write("\x93NUMPY\x01\x00", 8);
    const char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
    f.write(len_bytes, 2);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
  }
  f.write(data, static_cast<std::streamsize>(nbytes));
  if (!f) Fail(kExitInput, "failed writing output file '" + path + "'");
}

std::string IndexedPath(const std::string& path, size_t index) {
  size_t slash = path.find_last_of('/');
  size_t dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) {
    return path + "_" + std::to_string(index);
  }
  return path.substr(0, dot) + "_" + std::to_string(index) + path.substr(dot);
}

/*! \brief Flatten a VM result (a tensor, or nested tuples of tensors) into a list. */
void FlattenOutputs(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto t = value.try_cast<ffi::Tensor>()) {
    out->push_back(*t);
    return;
  }
  if (auto arr = value.try_cast<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *arr) FlattenOutputs(item, out);
    return;
  }
  Fail(kExitRuntime, "the function returned a " + std::string(value.GetTypeKey()) + ", not tensors");
}

// ------------------------------------------------------------------------------ command line
struct Options {
  std::string model;
  std::vector<std::string> inputs;  // --input SPECs, in order
  int threads = 0;
  int warmup = 3;
  int repeat = 10;
  std::string output;
  std::string function = "main";
  int allocator = kPooledAllocator;
  uint64_t seed = 0;
  std::string tvm_runtime;
};

Options ParseArgs(int argc, char** argv) {
  Options o;
  auto value = [&](int* i, const std::string& flag) -> std::string {
    if (*i + 1 >= argc) Fail(kExitUsage, flag + " needs a value");
    return argv[++*i];
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string inline_value;
    bool has_inline = false;
    if (a.rfind("--", 0) == 0 && a.find('=') != std::string::npos) {
      inline_value = a.substr(a.find('=') + 1);
      a = a.substr(0, a.find('='));
      has_inline = true;
    }
    auto get = [&]() { return has_inline ? inline_value : value(&i, a); };
    if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (a == "--model") {
      o.model = get();
    } else if (a == "--input") {
      o.inputs.push_back(get());
    } else if (a == "--threads") {
      o.threads = static_cast<int>(ParseInt(get(), "--threads", 0));
    } else if (a == "--warmup") {
      o.warmup = static_cast<int>(ParseInt(get(), "--warmup", 0));
    } else if (a == "--repeat") {
      o.repeat = static_cast<int>(ParseInt(get(), "--repeat", 1));
    } else if (a == "--output") {
      o.output = get();
    } else if (a == "--function") {
      o.function = get();
    } else if (a == "--allocator") {
      std::string k = get();
      if (k == "pooled") {
        o.allocator = kPooledAllocator;
      } else if (k == "naive") {
        o.allocator = kNaiveAllocator;
      } else {
        Fail(kExitUsage, "--allocator must be 'pooled' or 'naive', got '" + k + "'");
      }
    } else if (a == "--seed") {
      o.seed = static_cast<uint64_t>(ParseInt(get(), "--seed", 0));
    } else if (a == "--tvm-runtime") {
      o.tvm_runtime = get();
    } else if (!a.empty() && a[0] == '-') {
      Fail(kExitUsage, "unknown option '" + a + "' (see --help)");
    } else if (o.model.empty()) {
      o.model = a;
    } else {
      Fail(kExitUsage, "unexpected argument '" + a + "': the model is already '" + o.model + "'");
    }
  }
  if (o.model.empty()) Fail(kExitUsage, "no model given (see --help)");
  return o;
}

/*! \brief Build the tensor an --input SPEC describes; `what` names it in messages. */
ffi::Tensor MakeInput(const std::string& spec, const std::string& what, std::mt19937_64* rng,
                      std::string* source) {
  if (EndsWith(spec, ".npy")) {
    if (!FileExists(spec)) Fail(kExitInput, what + ": input file '" + spec + "' does not exist");
    *source = spec;
    return ReadNpy(spec);
  }
  std::vector<std::string> parts = Split(spec, ':');
  // SHAPE[:DTYPE] -- random data
  if (parts.size() <= 2) {
    if (auto shape = TryParseShape(parts[0])) {
      DLDataType dtype = ParseDType(parts.size() == 2 ? parts[1] : "float32", what);
      *source = "random";
      return RandomTensor(*shape, dtype, rng);
    }
  }
  // FILE:SHAPE[:DTYPE] -- raw data (the file name may itself contain ':')
  for (size_t cut = parts.size() - 1; cut >= 1; --cut) {
    std::string file;
    for (size_t k = 0; k < cut; ++k) file += (k ? ":" : "") + parts[k];
    auto shape = TryParseShape(parts[cut]);
    if (!shape) continue;
    if (parts.size() - cut > 2) continue;
    if (!FileExists(file)) Fail(kExitInput, what + ": input file '" + file + "' does not exist");
    DLDataType dtype = ParseDType(cut + 1 < parts.size() ? parts[cut + 1] : "float32", what);
    *source = file;
    return ReadRaw(file, *shape, dtype);
  }
  if (FileExists(spec)) {
    Fail(kExitInput, what + ": '" + spec + "' is not a .npy file: give its shape and dtype, e.g. " + spec +
                         ":1x3x224x224:float32");
  }
  Fail(kExitInput, what + ": '" + spec + "' is neither an existing .npy file, FILE:SHAPE[:DTYPE], nor SHAPE[:DTYPE]");
}

// ------------------------------------------------------------------------------ TVM runtime
void LoadTVMRuntime(const std::string& explicit_path) {
  std::vector<std::string> candidates;
  if (!explicit_path.empty()) {
    if (!FileExists(explicit_path)) Fail(kExitUsage, "--tvm-runtime: '" + explicit_path + "' does not exist");
    candidates.push_back(explicit_path);
  } else {
    if (const char* dir = std::getenv("TVM_LIBRARY_PATH")) candidates.push_back(std::string(dir) + "/libtvm_runtime.so");
    // By name: LD_LIBRARY_PATH, then this executable's RUNPATH (the installed tvm package's lib/).
    candidates.push_back("libtvm_runtime.so");
  }
  std::string errors;
  for (const std::string& c : candidates) {
    if (dlopen(c.c_str(), RTLD_NOW | RTLD_GLOBAL) != nullptr) return;
    const char* e = dlerror();
    errors += std::string("\n  ") + (e ? e : c);
  }
  Fail(kExitRuntime,
       "cannot load TVM's runtime library (libtvm_runtime.so from the apache-tvm wheel): pass "
       "--tvm-runtime PATH, set TVM_LIBRARY_PATH to its directory, or add that to LD_LIBRARY_PATH." +
           errors);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int Run(int argc, char** argv) {
  Options opt = ParseArgs(argc, argv);
  if (!FileExists(opt.model)) Fail(kExitInput, "model file '" + opt.model + "' does not exist");
  if (opt.threads > 0) setenv("TVM_NUM_THREADS", std::to_string(opt.threads).c_str(), 1);
  LoadTVMRuntime(opt.tvm_runtime);

  std::optional<ffi::Module> loaded;
  try {
    // dlopen searches the library path for a name without '/': give it the full path.
    char* resolved = realpath(opt.model.c_str(), nullptr);
    std::string full = resolved ? std::string(resolved) : opt.model;
    std::free(resolved);
    loaded = ffi::Module::LoadFromFile(full);
  } catch (const ffi::Error& e) {
    Fail(kExitInput, "cannot load model '" + opt.model + "': " + e.kind() + ": " + e.message());
  }
  ffi::Module lib = *loaded;
  ffi::Optional<ffi::Function> load_exec = lib->GetFunction("vm_load_executable", true);
  if (!load_exec) {
    Fail(kExitInput, "'" + opt.model + "' is not a Relax VM executable (no vm_load_executable): export it "
                     "with QuantizedModule.export_library or relax Executable.export_library");
  }
  ffi::Module vm = (*load_exec)().cast<ffi::Module>();
  // One CPU device (device_type, device_id, allocator_type), as relax.VirtualMachine(exe, tvm.cpu()).
  vm->GetFunction("vm_initialization", false).value()(static_cast<int>(kDLCPU), 0, opt.allocator);

  if (opt.threads > 0) {
    if (auto config = ffi::Function::GetGlobal("runtime.config_threadpool")) (*config)(1, opt.threads);
  }
  int threads = -1;
  if (auto num_threads = ffi::Function::GetGlobal("runtime.NumThreads")) threads = (*num_threads)().cast<int>();

  // Parameters of the function: checks the number of inputs, names them in messages.
  int64_t arity = -1;
  std::vector<std::string> names;
  if (auto f = vm->GetFunction("get_function_arity", false)) {
    try {
      arity = (*f)(opt.function).cast<int64_t>();
    } catch (const ffi::Error& e) {
      Fail(kExitUsage, "the module has no function '" + opt.function + "' (" + e.message() + ")");
    }
    auto pname = vm->GetFunction("get_function_param_name", false);
    for (int64_t i = 0; i < arity && pname; ++i) names.push_back(std::string((*pname)(opt.function, i).cast<ffi::String>()));
  }
  ffi::Optional<ffi::Function> func = vm->GetFunction(opt.function, false);
  if (!func) Fail(kExitUsage, "the module has no function '" + opt.function + "'");
  std::string params;
  for (size_t i = 0; i < names.size(); ++i) params += (i ? ", " : "") + names[i];
  if (arity >= 0 && static_cast<int64_t>(opt.inputs.size()) != arity) {
    Fail(kExitInput, opt.function + " takes " + std::to_string(arity) + " input(s) (" + params + "), " +
                         std::to_string(opt.inputs.size()) + " given with --input");
  }

  std::mt19937_64 rng(opt.seed);
  std::vector<ffi::Tensor> inputs;
  std::cout << "model: " << opt.model << "\n";
  std::cout << "function: " << opt.function << "(" << params << ")\n";
  for (size_t i = 0; i < opt.inputs.size(); ++i) {
    std::string name = i < names.size() ? names[i] : std::to_string(i);
    std::string source;
    ffi::Tensor t = MakeInput(opt.inputs[i], "input " + std::to_string(i) + " (" + name + ")", &rng, &source);
    const DLTensor* dl = t.GetDLTensorPtr();
    std::cout << "input " << i << " (" << name << "): " << DTypeName(dl->dtype)
              << ShapeToString(std::vector<int64_t>(dl->shape, dl->shape + dl->ndim)) << " from " << source << "\n";
    inputs.push_back(t);
  }
  std::cout << "threads: " << threads << "\n";
  std::cout << "allocator: " << (opt.allocator == kPooledAllocator ? "pooled" : "naive") << "\n";
  std::cout.flush();

  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  ffi::Any result;
  auto run_once = [&]() {
    try {
      func.value().CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    } catch (const ffi::Error& e) {
      // A wrong input shape or dtype is reported by the VM's own checks.
      Fail(kExitInput, "running " + opt.function + " failed: " + e.kind() + ": " + e.message());
    }
  };
  for (int i = 0; i < opt.warmup; ++i) run_once();
  std::vector<double> ms;
  for (int i = 0; i < opt.repeat; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    run_once();
    auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }

  std::vector<ffi::Tensor> outputs;
  FlattenOutputs(result, &outputs);
  for (size_t i = 0; i < outputs.size(); ++i) {
    const DLTensor* dl = outputs[i].GetDLTensorPtr();
    std::cout << "output " << i << ": " << DTypeName(dl->dtype)
              << ShapeToString(std::vector<int64_t>(dl->shape, dl->shape + dl->ndim));
    if (!opt.output.empty()) {
      std::string path = outputs.size() == 1 ? opt.output : IndexedPath(opt.output, i);
      WriteOutput(path, outputs[i]);
      std::cout << " -> " << path;
    }
    std::cout << "\n";
  }

  double mean = 0;
  for (double v : ms) mean += v;
  mean /= ms.size();
  double var = 0;
  for (double v : ms) var += (v - mean) * (v - mean);
  double std_ms = std::sqrt(var / ms.size());
  std::cout.setf(std::ios::fixed);
  std::cout.precision(6);
  std::cout << "warmup: " << opt.warmup << "\n";
  std::cout << "runs_ms:";
  for (double v : ms) std::cout << " " << v;
  std::cout << "\n";
  std::cout << "count=" << ms.size() << " median_ms=" << Median(ms) << " min_ms=" << *std::min_element(ms.begin(), ms.end())
            << " max_ms=" << *std::max_element(ms.begin(), ms.end()) << " mean_ms=" << mean << " std_ms=" << std_ms
            << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const UserError& e) {
    std::cout.flush();
    std::cerr << "tvm-mpq-benchmark: error: " << e.message << "\n";
    return e.code;
  } catch (const ffi::Error& e) {
    std::cout.flush();
    std::cerr << "tvm-mpq-benchmark: error: " << e.kind() << ": " << e.message() << "\n";
    return kExitRuntime;
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "tvm-mpq-benchmark: error: " << e.what() << "\n";
    return kExitRuntime;
  }
}
