from glob import glob

from setuptools import find_packages, setup

package_name = 'taco_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    package_data={package_name: ['data/*', 'model_configs/*.json']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.rviz')
         + glob('config/*.xml')),
        ('bin', ['scripts/taco-ros']),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='taco_ros maintainers',
    maintainer_email='taco-ros@users.noreply.github.com',
    description='Sound-prompted segmentation (TACO) as a ROS 2 node.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'taco-ros = taco_ros.cli:main',
            'taco_node = taco_ros.taco_node:main',
            'mic_node = taco_ros.mic_node:main',
        ],
    },
)
