import AsyncHTTPClient
import CloudAgentCore
import CloudAgentEngine
import Foundation
import Hummingbird
import NIOCore
import NIOHTTP1

/// `GET /v1/sessions/{id}/logs?tail=N`: the last N lines of the session's runtime log, as text.
struct LogRoutes {
    let service: SessionService

    func register(on group: RouterGroup<AppRequestContext>) {
        group.get("sessions/:sessionId/logs", use: logs)
    }

    @Sendable func logs(_ request: Request, context: AppRequestContext) async throws -> Response {
        let owner = try context.requireOwner()
        let id = try SessionRoutes.sessionID(context)
        var lines = SessionService.defaultLogLines
        if let text = request.uri.queryParameters["tail"] {
            guard let value = Int(String(text)), (1...SessionService.maxLogLines).contains(value) else {
                throw APIError.invalid(field: "tail", "must be a whole number from 1 to \(SessionService.maxLogLines)")
            }
            lines = value
        }
        let localOnly = request.uri.queryParameters["local"] == "true"
        switch try await service.runtimeLog(id, owner: owner, lines: lines, localOnly: localOnly) {
        case .text(let text):
            return Response(
                status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
        case .gone(let node):
            throw APIError(
                .serviceUnavailable, code: "RUNTIME_UNAVAILABLE",
                "the runtime's log is on node \(node), which is gone; it can be read there once that node is back",
                details: ["retryable": .bool(true), "node": .string(node)])
        case .elsewhere(let node, let baseURL):
            return try await forward(request, to: baseURL, node: node, session: id, lines: lines)
        }
    }

    /// Asks the runtime's host node for the log (`local=true`: it answers from its own disk),
    /// with the caller's own credentials.
    private func forward(_ request: Request, to baseURL: String, node: String, session id: SessionID, lines: Int) async throws -> Response {
        var base = baseURL
        while base.hasSuffix("/") { base.removeLast() }
        var forwarded = HTTPClientRequest(url: "\(base)/v1/sessions/\(id.rawValue)/logs?tail=\(lines)&local=true")
        if let authorization = request.headers[.authorization] { forwarded.headers.add(name: "Authorization", value: authorization) }
        do {
            let answer = try await HTTPClient.shared.execute(forwarded, timeout: .seconds(10))
            let body = try await answer.body.collect(upTo: 4 << 20)
            var headers = HTTPFields()
            headers[.contentType] = answer.headers.first(name: "Content-Type") ?? "text/plain; charset=utf-8"
            return Response(status: .init(code: Int(answer.status.code)), headers: headers, body: ResponseBody(byteBuffer: body))
        } catch {
            throw APIError(
                .serviceUnavailable, code: "RUNTIME_UNAVAILABLE", "the runtime's log is on node \(node), which did not answer: \(error)",
                details: ["retryable": .bool(true), "node": .string(node)])
        }
    }
}
