import CloudAgentCore
import CloudAgentEngine
import Foundation
import Hummingbird
import Logging

/// `/v1/sessions…`: prepare, read, list, change and delete sessions.
struct SessionRoutes {
    let service: SessionService

    func register(on group: RouterGroup<AppRequestContext>) {
        group.post("sessions", use: create)
        group.get("sessions", use: list)
        group.get("sessions/:sessionId", use: show)
        group.patch("sessions/:sessionId", use: patch)
        group.delete("sessions/:sessionId", use: delete)
    }

    @Sendable func create(_ request: Request, context: AppRequestContext) async throws -> Response {
        let owner = try context.requireOwner()
        let input: SessionInput
        do { input = try SessionInput.parseCreate(try await JSONResponse.body(of: request)) } catch let error as ValidationError { throw APIError.from(error) }
        let session = try await service.create(owner: owner, input: input)
        return JSONResponse.make(Views.session(session, latest: nil, timing: service.timing, sandbox: service.sandboxKind), status: .created)
    }

    @Sendable func show(_ request: Request, context: AppRequestContext) async throws -> Response {
        let session = try await service.session(try Self.sessionID(context), owner: try context.requireOwner())
        return JSONResponse.make(
            Views.session(session, latest: try await service.currentExecution(of: session), timing: service.timing, sandbox: service.sandboxKind))
    }

    @Sendable func list(_ request: Request, context: AppRequestContext) async throws -> Response {
        let owner = try context.requireOwner()
        let query = request.uri.queryParameters
        var limit = 50
        if let text = query["limit"] {
            guard let value = Int(String(text)), (1...200).contains(value) else {
                throw APIError.invalid(field: "limit", "must be a whole number from 1 to 200")
            }
            limit = value
        }
        var cursor: SessionCursor?
        if let text = query["cursor"] {
            guard let value = SessionCursor(token: String(text)) else { throw APIError.invalid(field: "cursor", "is not a cursor this server handed out") }
            cursor = value
        }
        let sessions = try await service.list(owner: owner, limit: limit, after: cursor)
        var views: [JSONValue] = []
        for session in sessions {
            views.append(Views.session(session, latest: try await service.currentExecution(of: session), timing: service.timing, sandbox: service.sandboxKind))
        }
        let next = sessions.count == limit ? sessions.last.map { JSONValue.string(SessionCursor(after: $0).token) } ?? .null : .null
        return JSONResponse.make(["sessions": .array(views), "nextCursor": next])
    }

    @Sendable func patch(_ request: Request, context: AppRequestContext) async throws -> Response {
        let owner = try context.requireOwner()
        let id = try Self.sessionID(context)
        // A missing session is a 404 whatever the body says.
        _ = try await service.session(id, owner: owner)
        let input: SessionInput
        do { input = try SessionInput.parsePatch(try await JSONResponse.body(of: request)) } catch let error as ValidationError { throw APIError.from(error) }
        let session = try await service.patch(id, owner: owner, input: input)
        return JSONResponse.make(
            Views.session(session, latest: try await service.currentExecution(of: session), timing: service.timing, sandbox: service.sandboxKind))
    }

    @Sendable func delete(_ request: Request, context: AppRequestContext) async throws -> Response {
        try await service.delete(try Self.sessionID(context), owner: try context.requireOwner())
        return Response(status: .noContent)
    }

    /// The path's session id; a malformed one names no session, so it is a 404.
    static func sessionID(_ context: AppRequestContext) throws -> SessionID {
        guard let raw = context.parameters.get("sessionId"), let id = SessionID(rawValue: raw) else {
            throw APIError.notFound("session \(context.parameters.get("sessionId") ?? "")")
        }
        return id
    }
}
