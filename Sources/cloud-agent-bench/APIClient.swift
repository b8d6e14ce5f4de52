import AsyncHTTPClient
import CloudAgentCore
import Foundation
import NIOCore
import NIOHTTP1

/// The REST API over real HTTP (AsyncHTTPClient), as a user calls it.
struct BenchAPI: Sendable {
    let baseURL: String
    let token: String

    struct Reply: Sendable {
        var status: Int
        var json: JSONValue

        subscript(_ key: String) -> JSONValue? { json.objectValue?[key] }
    }

    @discardableResult
    func call(_ method: HTTPMethod, _ path: String, json body: JSONValue? = nil, timeoutSeconds: Int64 = 30) async throws -> Reply {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: JSONText.encode(body)))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(timeoutSeconds))
        let bytes = try await response.body.collect(upTo: 8 << 20)
        let json = bytes.readableBytes == 0 ? JSONValue.null : ((try? JSONDecoder().decode(JSONValue.self, from: Data(bytes.readableBytesView))) ?? .null)
        return Reply(status: Int(response.status.code), json: json)
    }

    /// A call whose status must be `expected`.
    @discardableResult
    func expect(_ expected: Int, _ method: HTTPMethod, _ path: String, json body: JSONValue? = nil) async throws -> Reply {
        let reply = try await call(method, path, json: body)
        guard reply.status == expected else {
            throw BenchFailure("\(method) \(path) answered \(reply.status), expected \(expected): \(reply.json)")
        }
        return reply
    }

    /// A plain GET without credentials (readiness probes); nil when nothing answers.
    static func status(of url: String, timeoutMs: Int64 = 1000) async -> Int? {
        let request = HTTPClientRequest(url: url)
        guard let response = try? await HTTPClient.shared.execute(request, timeout: .milliseconds(timeoutMs)) else { return nil }
        _ = try? await response.body.collect(upTo: 1 << 20)
        return Int(response.status.code)
    }
}
