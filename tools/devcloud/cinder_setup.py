"""Idempotent post-start cinder setup: volume type ``fake`` (the default),
a public generic group type ``fake-group`` (for group snapshots; the
built-in ``default_cgsnapshot_type`` is reserved for migrated CGs), and a
public group type ``fake-consistent`` whose spec
``consistent_group_snapshot_enabled = <is> True`` makes cgsnap cut a group's
volumes with one group snapshot.

Runs in the cinder venv (keystoneauth1 is a cinder dependency) once
keystone and cinder answer.
"""

import os
import sys

from keystoneauth1 import session
from keystoneauth1.identity import v3

AUTH_URL = 'http://127.0.0.1:15000/v3'
TYPE = 'fake'
BACKEND = 'fake'
GROUP_TYPE = 'fake-group'
CONSISTENT_GROUP_TYPE = 'fake-consistent'
CONSISTENT_SPECS = {'consistent_group_snapshot_enabled': '<is> True'}


def main():
    auth = v3.Password(auth_url=AUTH_URL, username='admin',
                       password=os.environ.get('DEVCLOUD_ADMIN_PASSWORD',
                                               'devcloud-admin'),
                       project_name='admin', user_domain_id='default',
                       project_domain_id='default')
    sess = session.Session(auth=auth)
    ep = dict(service_type='volumev3', interface='public')
    hdr = {'OpenStack-API-Version': 'volume 3.62'}

    types = sess.get('/types?is_public=None', endpoint_filter=ep,
                     headers=hdr).json()['volume_types']
    vt = next((t for t in types if t['name'] == TYPE), None)
    if vt is None:
        vt = sess.post('/types', endpoint_filter=ep, headers=hdr, json={
            'volume_type': {'name': TYPE, 'os-volume-type-access:is_public':
                            True, 'description': 'devcloud fake backend'}},
        ).json()['volume_type']
    # Cinder refuses to change the specs of a type in use: set them only
    # when they differ (a re-run finds them set).
    if vt.get('extra_specs', {}).get('volume_backend_name') != BACKEND:
        sess.post('/types/%s/extra_specs' % vt['id'], endpoint_filter=ep,
                  headers=hdr, json={'extra_specs': {
                      'volume_backend_name': BACKEND}})

    gtypes = sess.get('/group_types?is_public=None', endpoint_filter=ep,
                      headers=hdr).json()['group_types']

    def group_type(name, description, specs=None):
        gt = next((t for t in gtypes if t['name'] == name), None)
        if gt is None:
            gt = sess.post('/group_types', endpoint_filter=ep, headers=hdr,
                           json={'group_type': {
                               'name': name, 'is_public': True,
                               'description': description}},
                           ).json()['group_type']
        if specs and any(gt.get('group_specs', {}).get(k) != v
                         for k, v in specs.items()):
            sess.post('/group_types/%s/group_specs' % gt['id'],
                      endpoint_filter=ep, headers=hdr,
                      json={'group_specs': specs})
        return gt

    gt = group_type(GROUP_TYPE, 'devcloud generic group type')
    cgt = group_type(CONSISTENT_GROUP_TYPE,
                     'devcloud consistent group type (one group snapshot)',
                     CONSISTENT_SPECS)
    print('cinder setup ok: volume type %s id=%s, group types %s id=%s, '
          '%s id=%s' % (TYPE, vt['id'], GROUP_TYPE, gt['id'],
                        CONSISTENT_GROUP_TYPE, cgt['id']), file=sys.stderr)


if __name__ == '__main__':
    main()
