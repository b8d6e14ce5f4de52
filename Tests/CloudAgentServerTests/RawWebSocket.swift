import CloudAgentTestSupport
import Foundation
import Testing
#if canImport(Glibc)
    import Glibc
#endif

/// A bare-bones WebSocket client over a blocking socket with a tiny receive buffer: it can stop
/// reading entirely (a truly stuck subscriber, whose TCP window closes), then read everything
/// that was sent, up to the server's close frame.
final class RawWebSocket: @unchecked Sendable {
    private let fd: Int32

    struct Frames: Sendable {
        var texts: [String] = []
        var closeCode: Int?
        var closeReason: String?
    }

    init(port: Int, path: String, headers: [String: String]) throws {
        fd = try loopbackSocket(port: port, receiveBufferBytes: 2048)
        var request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        request += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        for (name, value) in headers { request += "\(name): \(value)\r\n" }
        request += "\r\n"
        try send(Array(request.utf8))
        // Read the response head byte by byte, so that no frame byte is consumed with it.
        var head: [UInt8] = []
        while !head.suffix(4).elementsEqual([13, 10, 13, 10]) {
            head.append(try read(1)[0])
        }
        let status = String(decoding: head, as: UTF8.self).split(separator: " ").dropFirst().first
        try #require(status == "101", "upgrade refused: \(String(decoding: head, as: UTF8.self))")
    }

    deinit { close(fd) }

    private func send(_ bytes: [UInt8]) throws {
        try #require(sendAll(bytes, to: fd))
    }

    private func read(_ count: Int) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let received = buffer[offset...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard received > 0 else { throw CancellationError() }
            offset += received
        }
        return buffer
    }

    /// Reads frames until the server's close frame (blocking; run it off the cooperative pool).
    func readUntilClose() throws -> Frames {
        var frames = Frames()
        while true {
            let header = try read(2)
            let opcode = header[0] & 0x0F
            var length = Int(header[1] & 0x7F)
            if length == 126 {
                length = try read(2).reduce(0) { $0 << 8 | Int($1) }
            } else if length == 127 {
                length = try read(8).reduce(0) { $0 << 8 | Int($1) }
            }
            let payload = try read(length)
            switch opcode {
            case 0x1: frames.texts.append(String(decoding: payload, as: UTF8.self))
            case 0x8:
                if payload.count >= 2 {
                    frames.closeCode = Int(payload[0]) << 8 | Int(payload[1])
                    frames.closeReason = String(decoding: payload[2...], as: UTF8.self)
                }
                return frames
            default: continue
            }
        }
    }

    /// `readUntilClose` on a thread of its own.
    func readUntilCloseInBackground() async throws -> Frames {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try self.readUntilClose() }) }
        }
    }
}

/// A TCP connection to 127.0.0.1:`port` with 10 s send and receive timeouts (and, when given, a
/// small receive buffer, so that a test can make the server's writes back up).
func loopbackSocket(port: Int, receiveBufferBytes: Int32? = nil) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    try #require(fd >= 0)
    if var size = receiveBufferBytes {
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    if connected != 0 { close(fd) }
    try #require(connected == 0, "connect failed")
    return fd
}

/// Writes all of `bytes` to the socket; false once the peer has closed or reset it (no SIGPIPE).
func sendAll(_ bytes: [UInt8], to fd: Int32) -> Bool {
    var offset = 0
    while offset < bytes.count {
        let sent = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent > 0 else { return false }
        offset += sent
    }
    return true
}
