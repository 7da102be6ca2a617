#include "integrity.hpp"

#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <vector>

#include "torchbridge/runtime.hpp"

namespace torchbridge {

namespace {

using Tables = std::array<std::array<uint32_t, 256>, 8>;

// Slicing-by-8: eight bytes per step, about 1-2 GB/s, so the check stays a small part of a load.
const Tables& crc_tables() {
  static const Tables tables = [] {
    Tables t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (size_t s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
    return t;
  }();
  return tables;
}

uint32_t le32(const unsigned char* p) { return p[0] | p[1] << 8 | p[2] << 16 | static_cast<uint32_t>(p[3]) << 24; }
uint16_t le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }
uint64_t le64(const unsigned char* p) { return le32(p) | static_cast<uint64_t>(le32(p + 4)) << 32; }

struct Stored {
  uint32_t crc = 0;
  uint64_t size = 0;  // uncompressed
};

[[noreturn]] void damaged(const std::string& path, const std::string& what) {
  throw Error(ErrorCode::kArtifact, path + ": damaged artifact: " + what +
                                        " (the file changed after it was written; export it again or restore a copy)");
}

std::vector<unsigned char> read_at(std::ifstream& file, uint64_t offset, uint64_t size) {
  std::vector<unsigned char> bytes(size);
  file.seekg(static_cast<std::streamoff>(offset));
  file.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
  if (static_cast<uint64_t>(file.gcount()) != size) bytes.clear();
  return bytes;
}

// Record name (without the archive's top folder, as PyTorchStreamReader names it) -> stored CRC.
std::map<std::string, Stored> central_directory(const std::string& path) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  const uint64_t file_size = static_cast<uint64_t>(file.tellg());
  // The end-of-central-directory record: 22 bytes plus a comment of up to 65535.
  const uint64_t tail_size = std::min<uint64_t>(file_size, 22 + 65535);
  const std::vector<unsigned char> tail = read_at(file, file_size - tail_size, tail_size);
  if (tail.size() < 22) damaged(path, "no zip end-of-central-directory record");
  int64_t end = -1;
  for (int64_t i = static_cast<int64_t>(tail.size()) - 22; i >= 0; --i)
    if (le32(&tail[i]) == 0x06054b50) {
      end = i;
      break;
    }
  if (end < 0) damaged(path, "no zip end-of-central-directory record");
  uint64_t entries = le16(&tail[end + 10]);
  uint64_t directory_size = le32(&tail[end + 12]);
  uint64_t directory_offset = le32(&tail[end + 16]);
  if (entries == 0xFFFF || directory_size == 0xFFFFFFFF || directory_offset == 0xFFFFFFFF) {
    // Zip64: a locator just before the record points at the 64-bit end record.
    const uint64_t locator = file_size - tail_size + static_cast<uint64_t>(end);
    if (locator < 20) damaged(path, "a zip64 archive without its locator");
    const std::vector<unsigned char> bytes = read_at(file, locator - 20, 20);
    if (bytes.size() != 20 || le32(bytes.data()) != 0x07064b50) damaged(path, "a zip64 archive without its locator");
    const std::vector<unsigned char> record = read_at(file, le64(&bytes[8]), 56);
    if (record.size() != 56 || le32(record.data()) != 0x06064b50) damaged(path, "a damaged zip64 end record");
    entries = le64(&record[32]);
    directory_size = le64(&record[40]);
    directory_offset = le64(&record[48]);
  }
  if (directory_offset > file_size || directory_size > file_size - directory_offset)
    damaged(path, "the zip central directory lies outside the file");
  const std::vector<unsigned char> directory = read_at(file, directory_offset, directory_size);
  if (directory.size() != directory_size) damaged(path, "the zip central directory cannot be read");

  std::map<std::string, Stored> stored;
  size_t at = 0;
  for (uint64_t n = 0; n < entries; ++n) {
    if (at + 46 > directory.size() || le32(&directory[at]) != 0x02014b50)
      damaged(path, "zip central directory entry " + std::to_string(n) + " is unreadable");
    const size_t name_length = le16(&directory[at + 28]);
    const size_t extra_length = le16(&directory[at + 30]);
    const size_t comment_length = le16(&directory[at + 32]);
    if (at + 46 + name_length + extra_length + comment_length > directory.size())
      damaged(path, "zip central directory entry " + std::to_string(n) + " is unreadable");
    Stored entry;
    entry.crc = le32(&directory[at + 16]);
    entry.size = le32(&directory[at + 24]);
    if (entry.size == 0xFFFFFFFF) {
      // The zip64 extra field (id 1) holds the 64-bit uncompressed size first.
      for (size_t e = at + 46 + name_length; e + 4 <= at + 46 + name_length + extra_length;) {
        const uint16_t id = le16(&directory[e]);
        const uint16_t length = le16(&directory[e + 2]);
        if (id == 1 && length >= 8 && e + 12 <= directory.size()) entry.size = le64(&directory[e + 4]);
        e += 4 + length;
      }
    }
    std::string name(reinterpret_cast<const char*>(&directory[at + 46]), name_length);
    name = name.substr(name.find('/') + 1);  // the archive's top folder
    stored[name] = entry;
    at += 46 + name_length + extra_length + comment_length;
  }
  return stored;
}

}  // namespace

uint32_t crc32(uint32_t crc, const unsigned char* data, size_t size) {
  const Tables& t = crc_tables();
  crc = ~crc;
  while (size >= 8) {
    uint32_t one, two;
    std::memcpy(&one, data, 4);
    std::memcpy(&two, data + 4, 4);
    one ^= crc;
    crc = t[7][one & 0xFF] ^ t[6][(one >> 8) & 0xFF] ^ t[5][(one >> 16) & 0xFF] ^ t[4][one >> 24] ^
          t[3][two & 0xFF] ^ t[2][(two >> 8) & 0xFF] ^ t[1][(two >> 16) & 0xFF] ^ t[0][two >> 24];
    data += 8;
    size -= 8;
  }
  while (size--) crc = t[0][(crc ^ *data++) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

void check_archive_integrity(const std::string& path, caffe2::serialize::PyTorchStreamReader& reader) {
  const std::map<std::string, Stored> stored = central_directory(path);
  for (const std::string& name : reader.getAllRecords()) {
    const auto found = stored.find(name);
    if (found == stored.end()) damaged(path, "record '" + name + "' is missing from the zip central directory");
    auto [data, size] = reader.getRecord(name);
    if (size != found->second.size)
      damaged(path, "record '" + name + "' holds " + std::to_string(size) + " bytes where the archive says " +
                        std::to_string(found->second.size));
    // A writer may skip the checksum (torch.serialization.set_crc32_options(False)) and store 0.
    if (found->second.crc == 0 && size > 0) continue;
    const uint32_t actual = crc32(0, static_cast<const unsigned char*>(data.get()), size);
    if (actual != found->second.crc) {
      char message[96];
      std::snprintf(message, sizeof(message), "fails its CRC-32 check (0x%08x where the archive says 0x%08x)", actual,
                    found->second.crc);
      damaged(path, "record '" + name + "' " + message);
    }
  }
}

}  // namespace torchbridge
