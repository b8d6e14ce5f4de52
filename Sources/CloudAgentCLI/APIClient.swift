import AsyncHTTPClient
import CloudAgentCore
import Foundation
import NIOCore
import NIOHTTP1

/// The client's one HTTPClient, alive for the whole process (so never shut down). Unlike the
/// shared client it does not retry a refused connection until the request's deadline: a
/// server that is not there is reported at once.
private let cliHTTPClient: HTTPClient = {
    var configuration = HTTPClient.Configuration.singletonConfiguration
    configuration.connectionPool.retryConnectionEstablishment = false
    configuration.timeout.connect = .seconds(10)
    return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
}()

/// The REST API over AsyncHTTPClient. Any answer
/// of 400 or more becomes a `CLIFailure` carrying the API's `error.message` and code; a request
/// that never got an answer is a connection failure.
struct APIClient: Sendable {
    /// `http(s)://host:port`, no trailing slash.
    let baseURL: String
    let token: String

    /// A decoded answer.
    struct Answer: Sendable {
        var status: Int
        var text: String
        var json: JSONValue

        /// The body as one line (the server writes compact JSON; re-encoded otherwise).
        var line: String { text.contains("\n") ? JSONText.encode(json) : text }
    }

    /// The WebSocket form of the base URL (`ws://` or `wss://`).
    var webSocketBaseURL: String {
        if baseURL.lowercased().hasPrefix("https://") { return "wss://" + baseURL.dropFirst("https://".count) }
        return "ws://" + baseURL.dropFirst("http://".count)
    }

    static let bodyLimit = 64 << 20

    /// Sends a request; throws `CLIFailure` for an error answer (≥ 400) or no answer.
    @discardableResult
    func send(_ method: HTTPMethod, _ path: String, body: JSONValue? = nil, timeout: TimeAmount = .seconds(60)) async throws -> Answer {
        let answer = try await sendAllowingErrors(method, path, body: body, timeout: timeout)
        if answer.status >= 400 { throw CLIFailure.api(status: answer.status, body: answer.json, text: answer.text) }
        return answer
    }

    /// Sends a request and returns whatever status it answers; throws only when there is no answer.
    func sendAllowingErrors(_ method: HTTPMethod, _ path: String, body: JSONValue? = nil, timeout: TimeAmount = .seconds(60)) async throws -> Answer {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: "cloud-agent-cli")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: JSONText.encode(body)))
        }
        let status: Int
        let buffer: ByteBuffer
        do {
            let response = try await cliHTTPClient.execute(request, timeout: timeout)
            status = Int(response.status.code)
            buffer = try await response.body.collect(upTo: Self.bodyLimit)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw CLIFailure.connection(baseURL, error)
        }
        let text = String(buffer: buffer).trimmingCharacters(in: .whitespacesAndNewlines)
        let json = text.isEmpty ? JSONValue.null : ((try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))) ?? .null)
        return Answer(status: status, text: text, json: json)
    }

    // MARK: The routes

    static func escape(_ component: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "/?#&=+")
        return component.addingPercentEncoding(withAllowedCharacters: allowed) ?? component
    }

    static func query(_ items: [(String, String?)]) -> String {
        let present = items.compactMap { name, value in value.map { "\(name)=\(escape($0))" } }
        return present.isEmpty ? "" : "?" + present.joined(separator: "&")
    }

    func sessionPath(_ id: String) -> String { "/v1/sessions/\(Self.escape(id))" }

    func session(_ id: String) async throws -> JSONValue { try await send(.GET, sessionPath(id)).json }

    /// The executions of a session, oldest first.
    func executions(_ id: String) async throws -> [JSONValue] {
        try await send(.GET, sessionPath(id) + "/executions").json["executions"]?.arrayItems ?? []
    }

    /// One page of events with ids above `fromId`.
    func events(_ id: String, fromId: Int64, limit: Int? = nil, executionId: String? = nil, types: [String]? = nil) async throws -> (
        events: [JSONValue], next: Int64, answer: Answer
    ) {
        let path =
            sessionPath(id) + "/events"
            + Self.query([
                ("fromId", String(fromId)), ("limit", limit.map(String.init)), ("executionId", executionId),
                ("types", types.map { $0.joined(separator: ",") }),
            ])
        let answer = try await send(.GET, path)
        let events = answer.json["events"]?.arrayItems ?? []
        return (events, answer.json["nextFromId"]?.intValue ?? fromId, answer)
    }
}
