// Classifies images with an adder model exported by adderconvert, from C++ through ONNX Runtime's C++ API:
// registers the com.adderconvert custom-op library, reads the model's metadata (input size, normalisation,
// class names) and prints one line per image, "index<TAB>class<TAB>name".
//
//   adderconvert_classify MODEL.onnx LIBRARY.so INPUT... [--threads N] [--logits OUT.f32]
//
// INPUT is either one raw tensor file (*.f32: little-endian float32, NCHW, already normalised, as many
// images as the file holds) or image files in binary netpbm form (PGM P5 gray, PPM P6 RGB, 8-bit), which are
// resized (bilinear, half-pixel centres, as torch.nn.functional.interpolate) and normalised here.
// --logits writes the model's outputs as raw float32 (images x classes), for comparisons across machines.
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Arguments {
  std::string model, library, logits;
  std::vector<std::string> inputs;
  int threads = 1;
};

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A whole number of at least 0 (no sign, no trailing characters), or -1.
int NonNegative(const char* text) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || errno == ERANGE || value < 0 || value > INT_MAX) return -1;
  return static_cast<int>(value);
}

Arguments Parse(int argc, char** argv) {
  Arguments args;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--threads") {
      if (i + 1 >= argc) throw std::invalid_argument("--threads needs a number");
      args.threads = NonNegative(argv[++i]);
      if (args.threads < 0) {
        throw std::invalid_argument("--threads must be 0 (ONNX Runtime's default) or more, not '" +
                                    std::string(argv[i]) + "'");
      }
    } else if (arg == "--logits") {
      if (i + 1 >= argc) throw std::invalid_argument("--logits needs a file name");
      args.logits = argv[++i];
    } else if (arg == "-h" || arg == "--help") {
      throw std::invalid_argument("");
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw std::invalid_argument("unknown option " + arg);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() < 3) throw std::invalid_argument("expected MODEL.onnx LIBRARY.so INPUT...");
  for (size_t i = 2; positional.size() > 3 && i < positional.size(); ++i) {
    if (EndsWith(positional[i], ".f32")) {
      throw std::invalid_argument("a raw tensor (" + positional[i] + ") must be the only INPUT");
    }
  }
  args.model = positional[0];
  args.library = positional[1];
  args.inputs.assign(positional.begin() + 2, positional.end());
  return args;
}

// The values of a JSON array of numbers, e.g. "[0.5, 0.25]".
std::vector<double> JsonNumbers(const std::string& text) {
  std::vector<double> values;
  std::string item;
  std::stringstream stream(text.substr(text.find('[') + 1));
  while (std::getline(stream, item, ',')) {
    item.erase(std::remove_if(item.begin(), item.end(), [](char c) { return c == ']' || std::isspace(c); }),
               item.end());
    if (!item.empty()) values.push_back(std::stod(item));
  }
  return values;
}

// The strings of a JSON array of strings, e.g. ["T-shirt/top", "Trouser"] (escapes \" \\ \/ only).
std::vector<std::string> JsonStrings(const std::string& text) {
  std::vector<std::string> values;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '"') continue;
    std::string value;
    for (++i; i < text.size() && text[i] != '"'; ++i) {
      if (text[i] == '\\' && i + 1 < text.size()) ++i;
      value += text[i];
    }
    values.push_back(value);
  }
  return values;
}

struct ModelInput {
  std::string name;
  int64_t channels = 0, height = 0, width = 0;
  std::vector<double> mean, std;
  std::vector<std::string> classes;
};

ModelInput DescribeInput(Ort::Session& session) {
  Ort::AllocatorWithDefaultOptions allocator;
  ModelInput input;
  input.name = session.GetInputNameAllocated(0, allocator).get();
  const std::vector<int64_t> shape = session.GetInputTypeInfo(0).GetTensorTypeAndShapeInfo().GetShape();
  if (shape.size() != 4 || shape[1] <= 0) throw std::runtime_error("the model's input is not (N, C, H, W)");
  input.channels = shape[1];
  input.height = shape[2];
  input.width = shape[3];
  Ort::ModelMetadata metadata = session.GetModelMetadata();
  auto lookup = [&](const char* key) {
    Ort::AllocatedStringPtr value = metadata.LookupCustomMetadataMapAllocated(key, allocator);
    return value ? std::string(value.get()) : std::string();
  };
  if (const std::string size = lookup("image_size"); !size.empty()) {
    const std::vector<double> hw = JsonNumbers(size);
    if (hw.size() == 2) input.height = static_cast<int64_t>(hw[0]), input.width = static_cast<int64_t>(hw[1]);
  }
  if (input.height <= 0 || input.width <= 0) {
    throw std::runtime_error("the model's input size is dynamic and its metadata has no image_size");
  }
  input.mean = JsonNumbers(lookup("mean"));
  input.std = JsonNumbers(lookup("std"));
  input.classes = JsonStrings(lookup("classes"));
  return input;
}

// An input file opened for reading, or a runtime_error naming it (a folder included).
std::ifstream OpenInput(const std::string& path, std::ios::openmode mode) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) throw std::runtime_error(path + " is a folder, not a file");
  std::ifstream file(path, mode);
  if (!file) throw std::runtime_error("cannot read " + path);
  return file;
}

std::vector<float> ReadTensor(const std::string& path, const ModelInput& input) {
  std::ifstream file = OpenInput(path, std::ios::binary | std::ios::ate);
  const int64_t bytes = file.tellg();
  const int64_t image_bytes = input.channels * input.height * input.width * 4;
  if (bytes == 0 || bytes % image_bytes != 0) {
    throw std::runtime_error(path + ": " + std::to_string(bytes) + " bytes is not a whole number of float32 " +
                             std::to_string(input.channels) + "x" + std::to_string(input.height) + "x" +
                             std::to_string(input.width) + " images");
  }
  std::vector<float> values(bytes / 4);
  file.seekg(0);
  file.read(reinterpret_cast<char*>(values.data()), bytes);
  return values;
}

// One netpbm image (P5 or P6, maxval <= 255), resized and normalised into `out` (C x H x W).
void ReadImage(const std::string& path, const ModelInput& input, float* out) {
  std::ifstream file = OpenInput(path, std::ios::binary);
  auto token = [&]() {
    std::string word;
    while (file >> std::ws && file.peek() == '#') file.ignore(1 << 20, '\n');
    file >> word;
    return word;
  };
  const std::string magic = token();
  if (magic != "P5" && magic != "P6") throw std::runtime_error(path + ": not a binary PGM (P5) or PPM (P6) image");
  auto number = [&]() {
    const std::string word = token();
    if (word.empty() || word.size() > 9 || word.find_first_not_of("0123456789") != std::string::npos) {
      throw std::runtime_error(path + ": a netpbm header needs width, height and maxval, found '" + word + "'");
    }
    return std::stoll(word);
  };
  const int64_t width = number(), height = number(), maxval = number();
  if (width <= 0 || height <= 0 || maxval <= 0 || maxval > 255) {
    throw std::runtime_error(path + ": unsupported size or maxval (8-bit images only)");
  }
  file.get();  // the one whitespace byte before the pixels
  const int64_t planes = magic == "P5" ? 1 : 3;
  if (planes == 3 && input.channels != 3) throw std::runtime_error(path + ": an RGB image for a gray model");
  std::vector<uint8_t> pixels(width * height * planes);
  if (!file.read(reinterpret_cast<char*>(pixels.data()), pixels.size())) {
    throw std::runtime_error(path + ": truncated pixel data");
  }
  // Bilinear with half-pixel centres (align_corners=False), coordinates below 0 clamped to 0.
  auto source = [](int64_t i, int64_t in, int64_t out, int64_t* low, int64_t* high, float* frac) {
    const float x = std::max((i + 0.5f) * static_cast<float>(in) / out - 0.5f, 0.0f);
    *low = std::min(static_cast<int64_t>(x), in - 1);
    *high = std::min(*low + 1, in - 1);
    *frac = x - *low;
  };
  for (int64_t c = 0; c < input.channels; ++c) {
    const int64_t plane = planes == 1 ? 0 : c;
    const float mean = c < static_cast<int64_t>(input.mean.size()) ? input.mean[c] : 0.0f;
    const float std = c < static_cast<int64_t>(input.std.size()) ? input.std[c] : 1.0f;
    for (int64_t y = 0; y < input.height; ++y) {
      int64_t y0, y1;
      float fy;
      source(y, height, input.height, &y0, &y1, &fy);
      for (int64_t x = 0; x < input.width; ++x) {
        int64_t x0, x1;
        float fx;
        source(x, width, input.width, &x0, &x1, &fx);
        auto at = [&](int64_t yy, int64_t xx) {  // a sample's share of maxval (white)
          return pixels[(yy * width + xx) * planes + plane] / static_cast<float>(maxval);
        };
        const float top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx;
        const float bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx;
        out[(c * input.height + y) * input.width + x] = (top * (1 - fy) + bottom * fy - mean) / std;
      }
    }
  }
}

int Run(const Arguments& args) {
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "adderconvert_classify");
  Ort::SessionOptions options;
  options.SetIntraOpNumThreads(args.threads);
  options.RegisterCustomOpsLibrary(args.library.c_str());
  Ort::Session session(env, args.model.c_str(), options);
  const ModelInput input = DescribeInput(session);
  const int64_t image_size = input.channels * input.height * input.width;

  std::vector<float> images;
  if (args.inputs.size() == 1 && EndsWith(args.inputs[0], ".f32")) {
    images = ReadTensor(args.inputs[0], input);
  } else {
    images.resize(args.inputs.size() * image_size);
    for (size_t i = 0; i < args.inputs.size(); ++i) ReadImage(args.inputs[i], input, images.data() + i * image_size);
  }
  const int64_t count = static_cast<int64_t>(images.size()) / image_size;

  Ort::AllocatorWithDefaultOptions allocator;
  const std::string output_name = session.GetOutputNameAllocated(0, allocator).get();
  const char* input_names[] = {input.name.c_str()};
  const char* output_names[] = {output_name.c_str()};
  const Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::ofstream logits_file;
  if (!args.logits.empty()) {
    logits_file.open(args.logits, std::ios::binary);
    if (!logits_file) throw std::runtime_error("cannot write " + args.logits);
  }
  constexpr int64_t kBatch = 64;
  for (int64_t start = 0; start < count; start += kBatch) {
    const int64_t n = std::min(kBatch, count - start);
    const std::vector<int64_t> shape{n, input.channels, input.height, input.width};
    Ort::Value x = Ort::Value::CreateTensor<float>(memory, images.data() + start * image_size, n * image_size,
                                                   shape.data(), shape.size());
    std::vector<Ort::Value> y = session.Run(Ort::RunOptions{nullptr}, input_names, &x, 1, output_names, 1);
    const int64_t classes = y[0].GetTensorTypeAndShapeInfo().GetShape().back();
    const float* logits = y[0].GetTensorData<float>();
    if (logits_file) logits_file.write(reinterpret_cast<const char*>(logits), n * classes * sizeof(float));
    for (int64_t i = 0; i < n; ++i) {
      const float* row = logits + i * classes;
      const int64_t best = std::max_element(row, row + classes) - row;
      const std::string name = best < static_cast<int64_t>(input.classes.size()) ? input.classes[best] : "";
      std::cout << start + i << '\t' << best << '\t' << name << '\n';
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Arguments args;
  try {
    args = Parse(argc, argv);
  } catch (const std::exception& e) {
    if (*e.what()) std::cerr << "error: " << e.what() << '\n';
    std::cerr << "usage: " << argv[0]
              << " MODEL.onnx LIBRARY.so (TENSOR.f32 | IMAGE.pgm/.ppm...) [--threads N] "
                 "[--logits OUT.f32]\n";
    return 2;
  }
  try {
    return Run(args);
  } catch (const std::exception& e) {  // Ort::Exception included
    std::cerr << "error: " << e.what() << '\n';
    return 1;
  }
}
