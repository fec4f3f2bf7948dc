// The server-only part of the wire conversion: a parameter snapshot (value, version and, for
// an admin pull, the optimizer state) as a ParameterValue message. Everything shared with the
// worker (tensors, the parameter table, contributions, versions) is in common/wire.h.
//
// Thread-safety: pure functions.
#ifndef DION_SERVER_WIRE_H_
#define DION_SERVER_WIRE_H_

#include "common/wire.h"
#include "dion/v1/dion.pb.h"
#include "server/parameter_store.h"

namespace dion {

void SnapshotToProto(const ParameterSnapshot& snapshot, v1::ParameterValue* proto);

}  // namespace dion

#endif  // DION_SERVER_WIRE_H_
