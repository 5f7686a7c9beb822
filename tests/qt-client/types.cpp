#include "types.h"

#include <QDBusMetaType>

namespace Kapsule {

QDBusArgument &operator<<(QDBusArgument &argument, const Container &container)
{
    argument.beginStructure();
    argument << container.name << container.status << container.image << container.created << container.mode;
    argument.endStructure();
    return argument;
}

const QDBusArgument &operator>>(const QDBusArgument &argument, Container &container)
{
    argument.beginStructure();
    argument >> container.name >> container.status >> container.image >> container.created >> container.mode;
    argument.endStructure();
    return argument;
}

QDBusArgument &operator<<(QDBusArgument &argument, const EnterResult &result)
{
    argument.beginStructure();
    argument << result.success << result.message << result.command;
    argument.endStructure();
    return argument;
}

const QDBusArgument &operator>>(const QDBusArgument &argument, EnterResult &result)
{
    argument.beginStructure();
    argument >> result.success >> result.message >> result.command;
    argument.endStructure();
    return argument;
}

void registerTypes()
{
    qDBusRegisterMetaType<Container>();
    qDBusRegisterMetaType<QList<Container>>();
    qDBusRegisterMetaType<EnterResult>();
}

} // namespace Kapsule
